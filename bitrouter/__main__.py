"""`python -m bitrouter` runs the CLI."""

from bitrouter.cli import main

if __name__ == "__main__":
    main()
