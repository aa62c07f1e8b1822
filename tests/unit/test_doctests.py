"""The examples in storagectl's docstrings are run, so they stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import storagectl


def _with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(storagectl.__path__, "storagectl."):
        if info.name.endswith("__main__"):
            continue
        tests = doctest.DocTestFinder().find(importlib.import_module(info.name))
        if any(t.examples for t in tests):
            names.append(info.name)
    return sorted(names)


MODULES = _with_examples()


def test_the_examples_are_found() -> None:
    assert {"storagectl.host.process", "storagectl.audit.ownership"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
