"""``python -m lamina.cli``: the ``lamina`` command without the installed entry point."""

import sys

from lamina.cli import main

sys.exit(main())
