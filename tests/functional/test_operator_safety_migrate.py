"""Operator safety of ``migrate`` on a sandbox node (real qemu-img, libvirt test driver).

A dry run never changes a byte, a destructive mode asks before it acts (and refuses
without a terminal unless --yes), declining says so, and the test driver - which forgets
a redefined domain when its connection closes - is refused before anything is done.
The same modes against a real libvirtd, with a journal: tests/libvirtd/
test_operator_safety_migrate.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from storagectl.record import record as rec
from storagectl.sandbox import SandboxSpec, create_sandbox
from tests.flowcheck import run


@pytest.fixture
def sandbox(tmp_path: Path):
    box = create_sandbox(SandboxSpec(root=tmp_path / "node", instances=4, seed=7))
    code, _, err = run(box, "persist", "--all")
    assert code == 0, err
    return box


def _digest(p: Path) -> str:
    """sha256 of a file's size and of each allocated extent (offset and bytes): the
    sandbox disks are sparse GiB files, and reading their holes cost minutes."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(str(size).encode())
        pos = 0
        while pos < size:
            try:
                start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
            f.seek(start)
            h.update(f"@{start}".encode())
            left = end - start
            while left:
                chunk = f.read(min(left, 1 << 20))
                h.update(chunk)
                left -= len(chunk)
            pos = end
    return h.hexdigest()


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with a digest of its bytes (and its mode)."""
    out = {}
    for root, _dirs, names in os.walk(path):
        for name in names:
            p = Path(root) / name
            st = p.lstat()
            digest = _digest(p) if p.is_file() and not p.is_symlink() else os.readlink(p)
            out[str(p.relative_to(path))] = f"{oct(st.st_mode)} {digest}"
    return out


def shutoff(box) -> str:  # noqa: ANN001
    return next(i.uuid for i in box.instances if i.state == "shutoff")


def with_retained_copy(box) -> tuple[str, Path]:  # noqa: ANN001
    """A shut-off instance whose record keeps a retained source, as a migration leaves it."""
    uuid = shutoff(box)
    inst_dir = box.instances_path / uuid
    record = rec.read_record(inst_dir, expect_uuid=uuid)
    disk = next(d for d in record.disks if d.name == "disk")
    kept = inst_dir / f"disk.retained-{disk.backend.value}"
    kept.write_bytes(Path(disk.path).read_bytes())
    item = {
        "disk": "disk",
        "backend": disk.backend.value,
        "format": disk.format,
        "path": str(kept),
        "retained_at": "2026-11-24T00:10:00Z",
        "migrated_to": "flat",
    }
    rec.write_record(inst_dir, dataclasses.replace(record, retained_sources=(item,)))
    return uuid, kept


def test_delete_retained_dry_run_deletes_nothing(sandbox) -> None:  # noqa: ANN001
    uuid, kept = with_retained_copy(sandbox)
    before = tree(sandbox.instances_path)
    code, out, err = run(sandbox, "migrate", "--delete-retained", uuid, "--dry-run")
    assert code == 0, err
    assert "would delete 1 retained source(s)" in out and str(kept) in out
    assert "dry run: nothing was changed" in err
    assert tree(sandbox.instances_path) == before


def test_delete_retained_without_a_terminal_needs_yes(sandbox) -> None:  # noqa: ANN001
    uuid, kept = with_retained_copy(sandbox)
    before = tree(sandbox.instances_path)
    code, out, err = run(sandbox, "migrate", "--delete-retained", uuid)
    assert code == 2, (out, err)
    assert err.strip() == (
        "--> UsageError: stdin is not a terminal: confirm with --yes (or look first with --dry-run)"
    )
    assert tree(sandbox.instances_path) == before


def test_delete_retained_declined_says_so_and_deletes_nothing(sandbox, monkeypatch) -> None:  # noqa: ANN001
    import storagectl.cli.migrate as migrate_cli

    uuid, kept = with_retained_copy(sandbox)
    before = tree(sandbox.instances_path)
    # a terminal that answers "n"
    monkeypatch.setattr(migrate_cli, "stdin_is_terminal", lambda: True, raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    code, out, err = run(sandbox, "migrate", "--delete-retained", uuid, input="n\n")
    assert code == 1, out + err
    assert "Delete? [y/N]" in err
    assert "--> Declined: not confirmed, nothing was changed" in err
    assert tree(sandbox.instances_path) == before
    # and with --yes it does delete, and says what
    code, out, err = run(sandbox, "migrate", "--delete-retained", uuid, "--yes")
    assert code == 0, err
    assert f"deleted {kept}" in out and not kept.exists()
    assert rec.read_record(kept.parent, expect_uuid=uuid).retained_sources == ()


@pytest.mark.parametrize("extra", [("--yes",), ("--dry-run",)])
def test_migrate_on_the_test_driver_is_refused_up_front(sandbox, extra) -> None:  # noqa: ANN001
    uuid = shutoff(sandbox)
    audited = findings(sandbox)
    before = tree(sandbox.root)
    code, out, err = run(sandbox, "migrate", uuid, "--to", "flat", "--disks", "root", *extra)
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"--> DriverUnsupported: cannot migrate on {sandbox.uri}: ")
    assert "forgets a redefined domain when its connection closes" in lines[0]
    assert out == ""
    after = tree(sandbox.root)
    after.pop("log", None), before.pop("log", None)
    assert after == before
    # and the next audit has nothing new to say
    assert findings(sandbox) == audited


def findings(sandbox) -> list[dict]:  # noqa: ANN001
    code, out, err = run(sandbox, "audit", "-o", "json")
    assert code in (0, 1, 2), err
    return json.loads(out)["findings"]
