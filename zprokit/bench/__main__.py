"""``python -m zprokit.bench``: the benchmark, and its child programs (``--serve KIND PARAMS``)."""

import sys

from ._run import main

sys.exit(main())
