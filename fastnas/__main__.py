"""``python -m fastnas``: the same as the ``fastnas`` console script."""
import sys

from .cli import main

sys.exit(main())
