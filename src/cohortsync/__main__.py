"""`python -m cohortsync`: the same as the `cohortsync` command."""

from cohortsync.cli import main

main()
