"""authsidecar server: issues and checks the tokens of a fleet of services over gRPC."""
