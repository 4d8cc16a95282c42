"""Entry point: `python -m bench` (see bench.runner for the options)."""

import sys

from bench.runner import main

sys.exit(main())
