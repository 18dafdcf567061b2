"""Renders the verdict tables of docs/reproduction.md from results-{quick,full}.json.

After a new quick or full run: copy its results.json here under that name, then run
``.venv/bin/python docs/reproduction/update_tables.py``. tests/test_docs.py checks that
the page equals this rendering.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from quflow.experiments import verdict

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "reproduction.md"


def main() -> None:
    text = PAGE.read_text()
    for name in ("quick", "full"):
        path = HERE / f"results-{name}.json"
        if path.exists():
            table = verdict.render_all(json.loads(path.read_text()))
            text = re.sub(rf"(<!-- verdict:{name} -->\n).*?(<!-- /verdict:{name} -->)",
                          lambda m: m.group(1) + table + m.group(2), text, flags=re.S)
    PAGE.write_text(text)


if __name__ == "__main__":
    main()
