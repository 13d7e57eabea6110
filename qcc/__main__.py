"""`python -m qcc`: the qcc command line."""

import sys

from qcc.cli import main

sys.exit(main())
