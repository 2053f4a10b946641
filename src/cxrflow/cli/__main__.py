"""``python -m cxrflow.cli``: the same program as ``cxrflow``."""

import sys

from cxrflow.cli.program import main

sys.exit(main())
