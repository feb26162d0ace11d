"""`bitrouter providers` and `bitrouter models`: the registry's providers and catalogs, as tables or JSON.

The same rendering writes docs/providers.md (scripts/providers_doc.py), so the page and
the commands cannot disagree with the registry data.
"""

import json

from bitrouter import Error, config, did_you_mean, hints, registry


def providers_command(home, as_json: bool = False) -> None:
    """Print every provider this home knows (built-in and custom) and whether it has a key."""
    cfg = config.load(home)
    rows = [_provider_row(name, p) for name, p in sorted(cfg.providers.items())]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = [("PROVIDER", "PROTOCOL", "KEY VARIABLE", "MODELS", "KEY")]
    table += [(r["name"], r["protocol"], r["key_variable"] or "-", str(r["models"]),
               "set" if r["configured"] else "-") for r in rows]
    print(_table(table))
    configured = sum(1 for r in rows if r["configured"] and registry.needs_key(r["api_base"]))
    print(f"\n{len(rows)} providers, {configured} with a key. "
          f"`{hints.command('models', 'PROVIDER')}` lists one provider's models.")


def models_command(home, provider=None, as_json: bool = False) -> None:
    """Print the catalog of one provider, or of every provider that has a key."""
    cfg = config.load(home)
    if provider is not None:
        provider = str(provider)
        if provider not in cfg.providers:
            raise Error(f"unknown provider {provider!r}{did_you_mean(provider, cfg.providers)}; "
                        f"`{hints.command('providers')}` lists them")
        names = [provider]
    else:
        names = cfg.configured_providers()
        if not names:
            raise Error(f"no provider has a key yet; `{hints.command('models', 'PROVIDER')}` lists any "
                        f"provider's catalog, `{hints.command('init')}` sets keys")
    rows = [{"model": f"{name}:{mid}", **_model_facts(info)}
            for name in names for mid, info in sorted(cfg.providers[name].models.items())]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"{', '.join(names)}: no catalog; any model id the provider serves works as "
              f"{names[0]}:MODEL_ID")
        return
    print(_table([("MODEL", "CONTEXT", "MAX OUTPUT", "INPUT $/M", "OUTPUT $/M", "INPUT")]
                 + [_model_cells(r) for r in rows], right=(1, 2, 3, 4)))
    print(f"\n{len(rows)} model{'' if len(rows) == 1 else 's'}; prices in USD per million tokens.")


def markdown() -> str:
    """docs/providers.md: every built-in provider, its variables and its catalog."""
    data = registry.providers()
    out = ["# Built-in providers", "",
           "Generated from `bitrouter/providers.json` by `scripts/providers_doc.py`; do not edit by hand.",
           "`bitrouter providers` and `bitrouter models PROVIDER` print the same facts.", "",
           "A provider is usable once its key variable is set (in the environment or the home's `.env`);",
           "`<PREFIX>_BASE_URL` overrides its base URL. Prices are USD per million tokens.", "",
           "| provider | protocol | key variable | base URL | models |", "|---|---|---|---|---|"]
    for name in registry.names():
        p = data[name]
        var = f"`{p['env_prefix']}_API_KEY`" if registry.needs_key(p["api_base"]) else ""
        out.append(f"| [{name}](#{_anchor(name)}) | {p['api_protocol']} | {var} | {p['api_base']} | "
                   f"{len(p.get('models', {}))} |")
    for name in registry.names():
        p = data[name]
        out += ["", f"## {name}", "", f"{p.get('display_name', name)}. Protocol `{p['api_protocol']}`, "
                f"base URL `{p['api_base']}`" + (f", key `{p['env_prefix']}_API_KEY`"
                                                 if registry.needs_key(p["api_base"]) else "") + ".", ""]
        models = p.get("models", {})
        if not models:
            out.append(f"No catalog: use any model id the provider serves as `{name}:MODEL_ID`.")
            continue
        out += ["| model | context | max output | input $/M | output $/M | input |",
                "|---|--:|--:|--:|--:|---|"]
        for mid, info in sorted(models.items()):
            cells = _model_cells({"model": f"`{name}:{mid}`", **_model_facts(info)})
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- helpers


def _provider_row(name: str, p) -> dict:
    return {"name": name, "protocol": p.api_protocol, "api_base": p.api_base,
            "key_variable": f"{p.env_prefix}_API_KEY" if p.env_prefix and p.needs_key else "",
            "models": len(p.models), "configured": p.configured}


def _model_facts(info: dict) -> dict:
    pricing = info.get("pricing") or {}
    return {"context": info.get("context"), "max_output": info.get("max_output"),
            "input_price": pricing.get("input"), "output_price": pricing.get("output"),
            "modalities": info.get("modalities") or ["text"]}


def _model_cells(row: dict) -> tuple:
    return (row["model"], _tokens(row["context"]), _tokens(row["max_output"]), _price(row["input_price"]),
            _price(row["output_price"]), "+".join(row["modalities"]))


def _tokens(n) -> str:
    """A token count with thousands separators (128,000); unknown as -."""
    return f"{n:,}" if n else "-"


def _price(usd) -> str:
    return "-" if usd is None else f"${usd:g}"


def _anchor(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum() or c in "-_")


def _table(rows: list, right=()) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows)
