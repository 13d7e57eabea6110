"""`python -m qcc.cli` runs the command line."""

import sys

from qcc.cli import main

sys.exit(main())
