"""``python -m bnnkit`` is the ``bnnkit`` command."""

import sys

from bnnkit.cli.main import main

sys.exit(main())
