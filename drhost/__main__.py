import sys

from drhost.cli import main

sys.exit(main())
