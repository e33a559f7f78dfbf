"""``python -m ddpmkit`` is the ``ddpmkit`` command."""

import sys

from ddpmkit.cli import main

sys.exit(main())
