"""`python -m perceiver_mt.shards write|inspect ...`: see `perceiver_mt.shards.cli`."""

import sys

from perceiver_mt.shards.cli import main

sys.exit(main())
