"""Root conftest: tiers are folders; each folder's tests get that tier's marker.

Session-wide fixtures for the real components live in ``tests/env/`` and are
loaded as plugins, so every tier can ask for them by name; each one starts its
component on demand and tears it down at the end of the session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.env.libvirtd",
    "tests.env.ceph",
    "tests.env.lvm",
]

TIERS = ("unit", "functional", "ansible", "libvirtd", "ceph", "lvm", "lvm_guest")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        try:
            tier = Path(item.fspath).relative_to(root).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
