"""``python -m unforget`` runs the command-line interface."""

from unforget.cli import main

main()
