import sys

from parley.cli._main import main

sys.exit(main())
