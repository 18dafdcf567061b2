"""The documentation tells the truth: its code runs, its outputs are what the code prints.

* Every ```python block in README.md and docs/*.md runs. The blocks of one page run in
  order in one namespace, like a notebook, in a temporary working folder. A block right
  after an HTML comment ``<!-- no-run -->`` is illustrative and is not run.
* A ```python block followed directly by a plain ``` block (no language) must print
  exactly that block's text (trailing spaces and blank lines at the end aside).
  Examples print rounded values, so the outputs hold across machines.
* A page that uses PennyLane is skipped only where PennyLane is not installed.
* Every public name (``quflow.__all__``, and the members of its modules) has a
  docstring, a function's with ``Args:`` and (unless it returns ``None``) ``Returns:``,
  and the API reference (docs/api.md) documents each of them.
* The verdict tables of docs/reproduction.md are the renderer's output for the
  committed results; README.md's relative links point to files that exist.

The docstring examples of the hybrid-model modules run as doctests.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import inspect
import io
import json
import re
import types
from pathlib import Path

import pytest

import quflow

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
NO_RUN = "<!-- no-run -->"
NEEDS_PENNYLANE = re.compile(r"\bpennylane\b|QuantumLayer|quflow\.(templates|QNG|metric_tensor|"
                             r"set_lightning_threads|transfer)")


def code_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, expected output or None)`` for each runnable ```python block."""
    fences = list(FENCE.finditer(text))
    blocks = []
    for i, m in enumerate(fences):
        if m.group(1) != "python":
            continue
        before = text[:m.start()].rstrip().rsplit("\n", 1)[-1].strip()
        if before == NO_RUN:
            continue
        expected = None
        if i + 1 < len(fences):
            nxt = fences[i + 1]
            if nxt.group(1) == "" and text[m.end():nxt.start()].strip() == "":
                expected = nxt.group(2)
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group(2), expected))
    return blocks


def _normalise(out: str) -> str:
    return "\n".join(line.rstrip() for line in out.rstrip().splitlines())


def _pages_with_code():
    return [p for p in PAGES if code_blocks(p.read_text())]


def test_the_pages_have_code_to_run():
    names = {p.name for p in _pages_with_code()}
    assert {"README.md", "simulator.md", "fidelity.md", "hybrid.md", "qng.md"} <= names


def test_block_collection_rules():
    text = ("```python\nprint(1)\n```\n```\n1\n```\n\n<!-- no-run -->\n```python\nx\n```\n"
            "```python\nprint(2)\n```\ntext\n```\n2\n```\n```bash\nls\n```\n")
    assert code_blocks(text) == [(1, "print(1)\n", "1\n"), (12, "print(2)\n", None)]


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: p.name)
def test_code_blocks_run_and_print_what_the_page_shows(page, tmp_path, monkeypatch):
    text = page.read_text()
    blocks = code_blocks(text)
    if any(NEEDS_PENNYLANE.search(code) for _, code, _ in blocks):
        pytest.importorskip("pennylane")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for line, code, expected in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        if expected is not None:
            assert _normalise(out.getvalue()) == _normalise(expected), \
                f"{page.name}, block at line {line}: printed output differs"


# ---------------------------------------------------------------- docstrings and the API page

def _public_objects():
    for name in quflow.__all__:
        obj = getattr(quflow, name)
        yield f"quflow.{name}", obj
        if isinstance(obj, types.ModuleType):
            for member in obj.__all__:
                yield f"quflow.{name}.{member}", getattr(obj, member)


@pytest.mark.parametrize("name,obj", list(_public_objects()), ids=lambda x: x
                         if isinstance(x, str) else "")
def test_every_public_name_has_a_docstring_with_args_and_returns(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{name} has no docstring"
    if inspect.isfunction(obj):
        sig = inspect.signature(obj)
        if sig.parameters:
            assert "\nArgs:\n" in doc, f"{name}: no Args: section"
        if sig.return_annotation not in (None, "None"):
            assert "\nReturns:\n" in doc, f"{name}: no Returns: section"
    elif inspect.isclass(obj) and not issubclass(obj, BaseException):
        params = [p for p in inspect.signature(obj.__init__).parameters if p != "self"]
        if params:
            assert "\nArgs:\n" in doc, f"{name}: no Args: section for its constructor"


def test_the_api_reference_documents_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^::: ([\w.]+)", text, re.M))
    for name in quflow.__all__:
        obj = getattr(quflow, name)
        paths = {f"quflow.{name}"}
        if isinstance(obj, types.ModuleType):
            paths.add(obj.__name__)
        else:
            paths.add(f"{obj.__module__}.{obj.__qualname__}")
        assert paths & documented, f"docs/api.md has no '::: quflow.{name}'"


@pytest.mark.parametrize("name", ["quantum", "templates", "pinn", "metric", "qng"])
def test_docstring_examples(name):
    module = importlib.import_module(f"quflow.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- generated tables and links

@pytest.mark.parametrize("name", ["quick", "full"])
def test_reproduction_page_tables_are_rendered_from_the_committed_results(name):
    from quflow.experiments import verdict

    text = (ROOT / "docs" / "reproduction.md").read_text()
    m = re.search(rf"<!-- verdict:{name} -->\n(.*?)<!-- /verdict:{name} -->", text, re.S)
    assert m, f"docs/reproduction.md has no verdict:{name} block"
    results = json.loads((ROOT / "docs" / "reproduction" / f"results-{name}.json").read_text())
    assert m.group(1) == verdict.render_all(results)


def test_readme_links_point_to_files_that_exist():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t and not t.startswith("mailto:")]
    assert local, "README.md links into the docs"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
    assert len(text.splitlines()) <= 250
