"""``python -m edown.cli``."""

from edown.cli import main

main()
