"""`pyweave`: weave's command line (launch, run, attach, status, ...)."""

import sys

from pyweave.cli import main

if __name__ == "__main__":
    sys.exit(main())
