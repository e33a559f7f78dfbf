"""``python -m ddpmkit.data list | fetch NAME | show NAME``."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
