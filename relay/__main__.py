"""``python -m relay`` works the same as ``atmos``."""

import sys

from relay.app.cli import main

sys.exit(main())
