"""``python -m improvd``: the same command as ``improvd``."""

import sys

from improvd.cli import main

sys.exit(main())
