"""``python -m hyperkit`` runs the CLI."""

from hyperkit.cli import main

main()
