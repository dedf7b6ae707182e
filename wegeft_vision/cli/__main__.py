"""`python -m wegeft_vision.cli`: the same as the `wegeft-vision` command (used to start worker processes)."""

import sys

from .main import main

sys.exit(main())
