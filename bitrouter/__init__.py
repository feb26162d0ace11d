"""BitRouter: a local LLM router for agent runtimes."""

__version__ = "0.1.0"


class Error(Exception):
    """A problem the user can fix; the CLI prints it as one `error: ...` line."""
