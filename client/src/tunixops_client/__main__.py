import sys

from tunixops_client.cli import main

sys.exit(main())
