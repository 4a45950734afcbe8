"""``python -m emolens ...`` (what ``accelerate launch -m emolens`` and ``torchrun -m emolens`` run)."""
import sys

from emolens.cli import main

sys.exit(main())
