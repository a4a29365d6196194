"""`python -m chunklm.cli ...` runs the command line."""

import sys

from chunklm.cli import main

sys.exit(main())
