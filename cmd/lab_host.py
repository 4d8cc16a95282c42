"""`pyweave-lab-host`: the main process of a host container of the compose lab (deploy/)."""

import sys

from pyweave_lab.compose_host import main

if __name__ == "__main__":
    sys.exit(main())
