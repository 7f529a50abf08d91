"""Key material: loading, hygiene, lookup by kid, and the public JWKS."""
