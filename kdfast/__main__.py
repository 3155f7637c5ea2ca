"""``python -m kdfast`` is the ``kdfast`` command line."""
import sys

from kdfast.cli import main

sys.exit(main())
