"""``python -m convssl ...`` (and ``torchrun -m convssl pretrain ...``)."""

import sys

from convssl.cli import main

sys.exit(main())
