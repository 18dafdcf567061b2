"""``python -m quflow ...``: the same as the ``quflow`` command."""

import sys

from .cli import main

sys.exit(main())
