"""The docstring examples of the hybrid-model modules run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["quantum", "templates", "pinn", "metric", "qng"])
def test_docstring_examples(name):
    module = importlib.import_module(f"quflow.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
