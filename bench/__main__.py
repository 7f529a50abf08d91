"""`python -m bench`: run the benchmark suite (bench/run.py)."""

import sys

from bench.run import main

sys.exit(main())
