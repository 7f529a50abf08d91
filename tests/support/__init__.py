"""Helpers shared by test modules (real keys, real files; no mocks of crypto)."""
