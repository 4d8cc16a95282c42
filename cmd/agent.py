"""`pyweave-agent`: the per-host agent; `pyweave launch` starts it, `pyweave stop` stops it."""

import sys

from pyweave.agent.main import main

if __name__ == "__main__":
    sys.exit(main())
