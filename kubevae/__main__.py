import sys

from kubevae.cli import main

sys.exit(main())
