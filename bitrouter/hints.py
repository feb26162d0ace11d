"""How printed hints spell a BitRouter command: the way the user ran it, so a hint runs as printed.

`bitrouter keygen` when `bitrouter` on PATH is this installation, else the path or
`python -m bitrouter` that started it, with the global options that hint needs
(`--home-dir ...`). The CLI records the invocation once, at start-up.
"""

import os
import shlex
import shutil
import sys
from pathlib import Path

_invocation = ["bitrouter"]  # program and global options; replaced by remember_invocation
_program_words = ["bitrouter"]  # the same without the global options


def remember_invocation(argv0: str, options: list) -> None:
    """Record how the user ran BitRouter: argv[0] and the global options every hint repeats."""
    _program_words[:] = _program(argv0)
    _invocation[:] = [*_program_words, *options]


def command(*args) -> str:
    """A runnable command line for a hint: `bitrouter keygen`, spelt the way BitRouter was started."""
    return " ".join(shlex.quote(str(a)) for a in [*_invocation, *args])


def program() -> str:
    """How the user started BitRouter, without the global options (for usage lines)."""
    return " ".join(shlex.quote(w) for w in _program_words)


# ---------------------------------------------------------------- helpers


def _program(argv0: str) -> list:
    """`bitrouter` when that name on PATH is this installation, else a path that runs it."""
    script = Path(sys.executable).with_name("bitrouter")
    if Path(argv0).name == "bitrouter":
        script = Path(argv0)
    on_path = shutil.which("bitrouter")
    if on_path and script.exists() and os.path.realpath(on_path) == os.path.realpath(script):
        return ["bitrouter"]
    if script.exists():
        try:
            shown = script.absolute().relative_to(Path.cwd())
            return ["./" + str(shown) if len(shown.parts) == 1 else str(shown)]
        except ValueError:
            return [str(script.absolute())]
    return [sys.executable, "-m", "bitrouter"]
