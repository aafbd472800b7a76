"""`python -m deploy.worker STORE_URI [--processes N]`: run workers on a job."""
import sys

from .loop import main

sys.exit(main())
