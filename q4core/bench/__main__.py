"""``python -m q4core.bench NAME ...``: see :mod:`q4core.bench.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
