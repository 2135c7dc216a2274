"""``python -m atoken`` runs the command line."""

from atoken.cli import main

main()
