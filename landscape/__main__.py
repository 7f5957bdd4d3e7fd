"""`python -m landscape ...`: the same command as `landscape ...`."""
import sys

from .launch import main

sys.exit(main())
