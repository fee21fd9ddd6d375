"""`python -m sparsesearch ...` (used by torchrun)."""

import sys

from .cli import main

sys.exit(main())
