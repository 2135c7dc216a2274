"""``python -m atoken.cli`` runs the command line."""

from atoken.cli import main

main()
