"""Renders the README's verdict blocks from docs/reproduction/results-{quick,full}.json.

After a new quick or full run: copy its results.json here under that name, then run
``.venv/bin/python docs/reproduction/update_readme.py``. tests/test_experiments.py checks
that the README equals this rendering.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from quflow.experiments import verdict

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    for name in ("quick", "full"):
        path = ROOT / "docs" / "reproduction" / f"results-{name}.json"
        if path.exists():
            table = verdict.render(json.loads(path.read_text()))
            text = re.sub(rf"(<!-- verdict:{name} -->\n).*?(<!-- /verdict:{name} -->)",
                          lambda m: m.group(1) + table + m.group(2), text, flags=re.S)
    readme.write_text(text)


if __name__ == "__main__":
    main()
