"""authsidecar's benchmark suite (issue 7): `python -m bench`; see docs/performance.md."""
