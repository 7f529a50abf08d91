"""The token engine: strict JWS, claim rules, issue / verify / refresh / introspect / revoke."""
