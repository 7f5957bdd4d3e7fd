"""`python -m landscape ...`: the same command as `landscape ...`."""
import sys

from .cli import main

sys.exit(main())
