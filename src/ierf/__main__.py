"""``python -m ierf``: the ``ierf`` command line."""

import sys

from ierf.cli import main

sys.exit(main())
