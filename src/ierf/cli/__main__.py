"""``python -m ierf.cli`` (e.g. under ``torchrun ... -m ierf.cli atlas build``)."""

import sys

from ierf.cli import main

sys.exit(main())
