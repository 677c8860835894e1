"""``python -m zprokit``: the same as the ``zprokit`` command."""

import sys

from .cli import main

sys.exit(main())
