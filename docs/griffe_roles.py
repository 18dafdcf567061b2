"""Griffe extension for the API reference: Sphinx roles in docstrings become links.

The docstrings name other objects as ``:func:`to_real```, ``:class:`~quflow.QuantumLayer```
and so on. A role whose target is a documented public object becomes a cross-reference
(``[`to_real`][quflow.to_real]``), which ``mkdocs build --strict`` checks. Targets in torch,
numpy or PennyLane, and roles in docstrings the API page does not show, become plain code;
an unknown target in a docstring the page shows is a warning, so the strict build fails.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types

import griffe

EXTERNAL = ("torch.", "numpy.", "qml.", "pennylane.")  # shown as code, not linked
ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc):`(~?)([\w.]+)`")


def _public_anchors() -> dict[str, str]:
    """Every path a docstring may use for a public object -> its anchor on the API page,
    which documents each name of ``quflow.__all__`` as ``quflow.<name>``."""
    quflow = importlib.import_module("quflow")
    anchors: dict[str, str] = {}
    for name in quflow.__all__:
        obj = getattr(quflow, name)
        anchor = f"quflow.{name}"
        if isinstance(obj, types.ModuleType):
            anchors[obj.__name__] = anchor
            for member in obj.__all__:
                anchors[f"{obj.__name__}.{member}"] = f"{anchor}.{member}"
            continue
        for path in {anchor, f"{obj.__module__}.{obj.__qualname__}"}:
            anchors[path] = anchor
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    if not member.startswith("_") and getattr(value, "__doc__", None):
                        anchors[f"{path}.{member}"] = f"{anchor}.{member}"
    return anchors


class SphinxRoles(griffe.Extension):
    """Rewrites ``:role:`target``` in every docstring griffe loads."""

    def __init__(self) -> None:
        super().__init__()
        self.anchors = _public_anchors()

    def _link(self, match: re.Match, obj: griffe.Object) -> str:
        short, target = match.group(1), match.group(2)
        text = target.rsplit(".", 1)[-1] if short else target
        scopes = [obj.path, obj.parent.path if obj.parent else "", obj.module.path]
        for candidate in [target, f"quflow.{target}"] + [f"{s}.{target}" for s in scopes]:
            if candidate in self.anchors:
                return f"[`{text}`][{self.anchors[candidate]}]"
        if obj.path in self.anchors and not target.startswith(EXTERNAL):  # on the API page
            griffe.logger.warning(f"{obj.path}: {match.group(0)} names no public object")
        return f"`{text}`"

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is None or ":" not in obj.docstring.value:
            return
        obj.docstring.value = ROLE.sub(lambda m: self._link(m, obj), obj.docstring.value)
