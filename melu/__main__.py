"""``python -m melu`` (and ``torchrun -m melu``) runs the CLI."""

from melu.cli import main

main()
