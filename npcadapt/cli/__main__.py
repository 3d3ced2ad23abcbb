"""`python -m npcadapt.cli`."""

import sys

from . import main

sys.exit(main())
