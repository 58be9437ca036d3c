"""``python -m dualenc``, which is how torchrun starts it: ``torchrun -m dualenc train ...``."""

from dualenc.cli import main

main()
