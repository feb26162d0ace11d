"""`python -m bitrouter` runs the CLI."""

from bitrouter.cli import main

main()
