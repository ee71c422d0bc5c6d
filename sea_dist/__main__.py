import sys

from sea_dist.cli import main

sys.exit(main())
