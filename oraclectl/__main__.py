"""`python -m oraclectl` runs the CLI."""

import sys

from oraclectl.main import main

sys.exit(main())
