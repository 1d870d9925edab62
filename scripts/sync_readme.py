"""Rewrite the README's generated blocks from the registries: ``python scripts/sync_readme.py``.

Each block sits between ``<!-- generated:NAME -->`` and ``<!-- end:NAME -->``; its text comes from
:func:`evosparse.cli.readme_blocks`. ``tests/test_readme.py`` fails while the README is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from evosparse.cli import readme_blocks

README = Path(__file__).resolve().parent.parent / "README.md"


def synced(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    for name, block in readme_blocks().items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- end:{name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no generated block {name!r}")
        text = pattern.sub(lambda match, block=block: match.group(1) + block + "\n" + match.group(2), text)
    return text


if __name__ == "__main__":
    current = README.read_text(encoding="utf-8")
    updated = synced(current)
    if updated != current:
        README.write_text(updated, encoding="utf-8")
        print("README.md updated")
    sys.exit(0)
