"""`python -m sidecar ...` is `authsidecar ...`."""

import sys

from sidecar.cli import main

sys.exit(main())
