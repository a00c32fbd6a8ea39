"""Entry point of `python -m mer`."""

import sys

from .cli import main

sys.exit(main())
