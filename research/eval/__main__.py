"""``python -m research.eval``: see :mod:`research.eval.cli`."""

from research.eval.cli import main

main()
