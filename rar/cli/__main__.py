"""`python -m rar.cli`: the `rar` command."""

import sys

from rar.cli import main

sys.exit(main())
