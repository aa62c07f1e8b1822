"""The data types storagectl passes around (no I/O here)."""

from __future__ import annotations

from typing import Any


def attrs(obj: object, *names: str) -> dict[str, Any]:
    """``{name: obj.<name>}`` for each of ``names``, in their order: the plain fields of a
    ``to_dict`` (the keys' order is that of the output)."""
    return {name: getattr(obj, name) for name in names}
