"""`python -m control.cli`: the `inferstream` command."""

from control.cli import main

main()
