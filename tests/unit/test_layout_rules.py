"""Rules of the code's layout that a grep can keep (issue #14).

Only ``storagectl/backends/`` knows which kinds of storage exist: everything else asks a
backend (``storagectl.backends.Storage.of(...)``, ``registry.backend_class(...)``) and
never branches on a disk's kind. A new backend is then one module plus one registry line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "storagectl"
KINDS = r"(?:QCOW2|FLAT|LVM|RBD|PLOOP)"
KIND_NAMES = r"(?:qcow2|flat|lvm|rbd|ploop)"

#: What branching on a backend kind looks like.
BRANCHES = {
    "a Backend kind constant": re.compile(rf"\bBackend\.{KINDS}\b"),
    "an isinstance test of a location type": re.compile(
        r"isinstance\([^)]*\b(?:File|LVM|RBD)Location\b"
    ),
    "a comparison with a kind's name": re.compile(
        rf"""(?:backend|kind|images_type)\s*(?:==|!=|\bin\b|\bis\b)\s*\(?\s*["']{KIND_NAMES}["']"""
    ),
    "an import of one backend's module": re.compile(
        r"from storagectl\.backends\.(?:files|lvm|rbd) import|"
        r"import storagectl\.backends\.(?:files|lvm|rbd)\b"
    ),
}

#: Where knowing the kinds is the point: the backends, and the enum that names them.
ALLOWED = (
    "backends/",
    "model/layout.py",  # class Backend(StrEnum): the names themselves
    # The sandbox builds a legacy node of each kind for tests and the demo: creating LVs
    # and RBD images for it is its job (it is not used by inspect/persist/audit/migrate).
    "sandbox/",
    "cli/sandbox.py",
)


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if not str(p.relative_to(ROOT)).startswith(ALLOWED))


def test_the_rule_sees_the_tree() -> None:
    names = {str(p.relative_to(ROOT)) for p in _modules()}
    assert "migrate/plan.py" in names and "backends/lvm.py" not in names
    assert len(names) > 40


@pytest.mark.parametrize("what", sorted(BRANCHES))
def test_no_module_outside_backends_branches_on_a_backend_kind(what: str) -> None:
    pattern = BRANCHES[what]
    hits = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in _modules()
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == [], f"{what} outside storagectl/backends/:\n" + "\n".join(hits)


@pytest.mark.parametrize(
    "line",
    [
        "if disk.backend is Backend.LVM:",
        "elif loc.kind is Backend.RBD and secret:",
        "if isinstance(m.dest, RBDLocation):",
        'if backend == "rbd":',
        'if nova.images_type == "lvm":',
        "from storagectl.backends.lvm import LVM",
    ],
)
def test_the_patterns_catch_what_they_are_for(line: str) -> None:
    assert any(p.search(line) for p in BRANCHES.values())
