"""``python -m relay`` works the same as ``atmos``."""

import sys

from relay.cli import main

sys.exit(main())
