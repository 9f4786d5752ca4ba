"""``python -m tracemark.cli``, as ``python -m tracemark``."""

from tracemark.cli.app import main

main()
