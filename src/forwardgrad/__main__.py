"""``python -m forwardgrad``: the command line, also as ``torchrun -m forwardgrad``."""

import sys

from .cli import main

sys.exit(main())
