"""gRPC transport: listeners, the AuthService servicer, and the error-to-status table."""
