"""Entry point for ``python -m gradeclip``."""
import sys

from .cli import main

sys.exit(main())
