import sys

from hil.cli.common import main

sys.exit(main())
