"""Help and argument checking for the CLI, both read from each command's signature and docstring.

A command's docstring is: a summary line, optional paragraphs, an optional `Usage:` block
(lines printed as they are) and an `Args:` block of `name (METAVAR): text` lines, where a
METAVAR means the option takes a value. fire runs the command; this module makes sure it
is only handed arguments the signature takes, and that `--help` reads like a man page.
"""

import inspect
import re

from bitrouter import Error, did_you_mean, hints

GLOBAL_OPTIONS = (
    ("--home-dir DIR", "the home directory (default: ./ if it has bitrouter.yaml, $BITROUTER_HOME, ~/.bitrouter)"),
    ("--config-file FILE", "the configuration file (default: HOME/bitrouter.yaml)"),
    ("--env-file FILE", "the file with API keys (default: HOME/.env)"),
    ("--run-dir DIR", "where the daemon keeps its pid file (default: HOME/run)"),
    ("--logs-dir DIR", "where the server writes its log (default: HOME/logs)"),
    ("--db URL", "the database (default: HOME/bitrouter.db; any peewee URL)"),
    ("-h, --help", "show this help"),
    ("-V, --version", "print the version"),
)
WIDTH = 100  # help lines are wrapped to this many columns
# One-letter forms of long options, per command: `bitrouter account -g`.
SHORT = {"account": {"g": "generate_key", "l": "list"}, "keys": {"l": "list"},
         "logs": {"f": "follow", "n": "lines"}}


class UsageError(Error):
    """A command line that names no known command or option (exit status 2)."""


def wants_help(argv: list) -> bool:
    """Whether -h/--help appears anywhere before a bare `--`."""
    return any(a in ("-h", "--help") for a in argv)


def render(cls, argv: list) -> str:
    """The help text of the command named in argv, or the overview when there is none."""
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        return _overview(cls, hints.program())
    name = words[0]
    fn = _command(cls, name)
    doc = _Doc(fn)
    params = _params(fn)
    prog = f"{hints.program()} {name}"
    usage = doc.usage or [prog + "".join(f" {_positional(p)}" for p in params["positional"])
                          + (" [options]" if params["options"] else "")]
    out = ["usage: " + usage[0]] + ["       " + line for line in usage[1:]] + ["", doc.summary]
    if doc.body:
        out += [""] + doc.body
    options = [(_flag(name, p, doc), doc.args.get(p.name, ("", ""))[1]) for p in params["options"]]
    if options:
        out += ["", "Options:"] + _table(options)
    out += ["", "Global options (before or after the command):"] + _table(GLOBAL_OPTIONS)
    return "\n".join(out) + "\n"


def parse(cls, argv: list) -> dict:
    """Check argv (command first) against the command's signature; the keyword arguments it gives.

    Raises UsageError naming the unknown command or option, with the closest match.
    """
    name, args = argv[0], argv[1:]
    fn = _command(cls, name)
    params = _params(fn)
    # A positional parameter may be named as an option too (`models --provider openai`), as fire allows.
    options = {p.name: p for p in params["options"] + params["positional"]}
    short = SHORT.get(name, {})
    doc = _Doc(fn)
    found, positional, i = {}, [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positional += args[i + 1:]
            break
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            i += 1
            continue
        flag, eq, value = arg.partition("=")
        key = short.get(flag[1:]) if re.fullmatch(r"-[A-Za-z]", flag) else flag[2:].replace("-", "_")
        if key not in options:
            known = ["--" + o.replace("_", "-") for o in options] + [f"-{s}" for s in short]
            raise UsageError(f"{name}: unknown option {flag}{did_you_mean(flag, known, cutoff=0.7)}"
                             f"; see `{_help_hint(name)}`")
        if _is_switch(options[key], doc):
            found[key] = True if not eq else value
        else:
            if not eq:
                if i + 1 >= len(args):
                    raise UsageError(f"{name}: --{key.replace('_', '-')} needs a value")
                i += 1
                value = args[i]
            found[key] = value
        i += 1
    slots = [p for p in params["positional"] if p.name not in found]
    if len(positional) > len(slots) and not params["variadic"]:
        raise UsageError(f"{name}: unexpected argument {positional[len(slots)]!r}; see `{_help_hint(name)}`")
    found.update((p.name, value) for p, value in zip(slots, positional))
    return found


def normalized(cls, argv: list) -> list:
    """argv with one-letter options spelt out, so fire (which knows no short forms) reads them."""
    out, short = [argv[0]], SHORT.get(argv[0], {})
    for arg in argv[1:]:
        flag, eq, value = arg.partition("=")
        if re.fullmatch(r"-[A-Za-z]", flag) and flag[1:] in short:
            arg = "--" + short[flag[1:]] + eq + value
        out.append(arg)
    return out


# ---------------------------------------------------------------- helpers


class _Doc:
    """A command docstring split into summary, body paragraphs, usage lines and Args entries."""

    def __init__(self, fn):
        lines = inspect.cleandoc(fn.__doc__ or "").splitlines()
        self.summary = lines[0] if lines else ""
        self.body, self.usage, self.args = [], [], {}
        section = "body"
        for line in lines[1:]:
            if line in ("Args:", "Usage:"):
                section = line[:-1].lower()
                continue
            if section == "body":
                self.body.append(line)
            elif section == "usage" and line.strip():
                self.usage.append(line.strip())
            elif section == "args" and line.strip():
                match = re.match(r"\s*(\w+)(?: \(([^)]+)\))?: (.*)", line)
                if match:
                    self.args[match[1]] = (match[2] or "", match[3])
                elif self.args:  # a continuation line
                    last = list(self.args)[-1]
                    self.args[last] = (self.args[last][0], self.args[last][1] + " " + line.strip())
        while self.body and not self.body[0].strip():
            self.body.pop(0)
        while self.body and not self.body[-1].strip():
            self.body.pop()


def _overview(cls, prog: str) -> str:
    doc = inspect.cleandoc(cls.__doc__ or "").splitlines()
    commands = [(name, _Doc(getattr(cls, name)).summary) for name in _commands(cls)]
    out = [f"usage: {prog} [COMMAND] [options]", "", doc[0]] + doc[1:]
    out += ["", "Commands:"] + _table(commands)
    out += ["", "Global options (before or after the command):"] + _table(GLOBAL_OPTIONS)
    out += ["", f"Run `{prog} COMMAND --help` for a command's options; docs/ has the details."]
    return "\n".join(out) + "\n"


def _commands(cls) -> list:
    return [name for name, fn in vars(cls).items() if callable(fn) and not name.startswith("_")]


def _command(cls, name: str):
    names = _commands(cls)
    if name not in names:
        if name.startswith("-"):
            raise UsageError(f"unknown option {name}; see `{hints.command('--help')}`")
        raise UsageError(f"unknown command {name!r}{did_you_mean(name, names, cutoff=0.7)}; "
                         f"see `{hints.command('--help')}` for the list")
    return getattr(cls, name)


def _params(fn) -> dict:
    params = list(inspect.signature(fn).parameters.values())[1:]  # without self
    return {"positional": [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD],
            "variadic": next((p for p in params if p.kind is p.VAR_POSITIONAL), None),
            "options": [p for p in params if p.kind is p.KEYWORD_ONLY]}


def _is_switch(param, doc: _Doc) -> bool:
    """An option without a METAVAR in the docstring that defaults to False takes no value."""
    return param.default is False and not doc.args.get(param.name, ("", ""))[0]


def _positional(param) -> str:
    metavar = param.name.upper()
    return f"[{metavar}]" if param.default is not param.empty else metavar


def _flag(command: str, param, doc: _Doc) -> str:
    metavar = doc.args.get(param.name, ("", ""))[0]
    letters = [s for s, long in SHORT.get(command, {}).items() if long == param.name]
    flag = "--" + param.name.replace("_", "-") + (f" {metavar}" if metavar else "")
    return ", ".join([f"-{s}" for s in letters] + [flag])


def _table(rows) -> list:
    """Two columns; the right one wrapped to fit WIDTH, continuation lines under its start."""
    import textwrap
    width = max(len(left) for left, _ in rows) + 2
    out = []
    for left, right in rows:
        lines = textwrap.wrap(right, max(30, WIDTH - width - 2)) or [""]
        out.append(f"  {left:<{width}}{lines[0]}".rstrip())
        out += [" " * (width + 2) + line for line in lines[1:]]
    return out


def _help_hint(name: str) -> str:
    return hints.command(name, "--help")
