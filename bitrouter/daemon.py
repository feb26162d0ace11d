"""Running BitRouter in the background: start, stop, restart, reload and status."""

from bitrouter import config


def status_text(home) -> str:
    """The `bitrouter status` report: paths, configuration summary and daemon state."""
    lines = [("daemon", "stopped"), ("home", home.root), ("config", home.config_file),
             ("env", home.env_file), ("runtime", home.run_dir), ("logs", home.logs_dir)]
    cfg = config.load(home)
    lines += [("database", config.mask_url(cfg.database_url)), ("listen", cfg.listen),
              ("providers", ", ".join(cfg.configured_providers()) or "(none configured)")]
    if cfg.models:
        lines.append(("models", ", ".join(sorted(cfg.models))))
    if cfg.unset_vars:
        lines.append(("unset", ", ".join(f"${{{v}}}" for v in cfg.unset_vars)))
    return "\n".join(f"{label + ':':<11}{value}" for label, value in lines)
