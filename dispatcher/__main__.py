"""``python -m dispatcher serve ...``: the same as the ``dispatcher`` command."""

import sys

from .cli import main

sys.exit(main())
