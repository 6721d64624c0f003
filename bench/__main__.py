"""`python -m bench` (or `make bench`): see `bench.cli` and docs/performance.md."""

import sys

from bench.cli import main

sys.exit(main())
