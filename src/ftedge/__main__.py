import sys

from ftedge.cli import main

sys.exit(main())
