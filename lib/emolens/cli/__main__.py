"""``python -m emolens.cli ...``: the same as the ``emolens`` console script."""
import sys

from emolens.cli import main

sys.exit(main())
