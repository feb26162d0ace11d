"""Write docs/providers.md from the registry data (tests/test_catalog.py checks it is current)."""

from pathlib import Path

from bitrouter import catalog

TARGET = Path(__file__).resolve().parent.parent / "docs" / "providers.md"

if __name__ == "__main__":
    TARGET.write_text(catalog.markdown(), encoding="utf-8")
    print(f"wrote {TARGET}")
