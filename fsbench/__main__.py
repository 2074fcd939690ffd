"""``python -m fsbench`` (and ``torchrun -m fsbench``): the command line."""
import sys

from fsbench.cli import main

sys.exit(main())
