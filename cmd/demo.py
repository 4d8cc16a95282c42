"""`pyweave-demo`: weave's tutorial on a lab of hosts on this machine (as root; scripts/demo.sh)."""

import sys

from pyweave_lab.demo import main

if __name__ == "__main__":
    sys.exit(main())
