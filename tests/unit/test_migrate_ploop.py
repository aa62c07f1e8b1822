"""migrate from ploop: qemu-img reads a ploop disk directory's root.hds as ``parallels``."""

from __future__ import annotations

from pathlib import Path

from storagectl.backends import Storage
from storagectl.host.process import Runner
from storagectl.migrate.copy import convert_argv
from storagectl.migrate.plan import DiskMove
from storagectl.migrate.verify import compare_argv
from storagectl.model.location import location


def ploop_move(inst: Path) -> DiskMove:
    source = location("ploop", "ploop", path=str(inst / "disk"))
    dest = location("flat", "raw", path=str(inst / "disk"))
    return DiskMove(
        "disk",
        "root",
        "vda",
        16 << 20,
        source,
        dest,
        temp_path=str(inst / "disk.migrating"),
        retained_path=str(inst / "disk.retained-ploop"),
    )


def test_a_ploop_directory_is_read_through_its_root_hds(tmp_path: Path) -> None:
    (tmp_path / "disk").mkdir()  # Nova's layout: disk/root.hds + disk/DiskDescriptor.xml
    storage = Storage(Runner())
    spec = storage.qemu_spec(location("ploop", "ploop", path=str(tmp_path / "disk")))
    hds = str(tmp_path / "disk" / "root.hds")
    assert (spec.format, spec.filename) == ("parallels", hds)
    assert spec.image_opts == f"driver=parallels,file.driver=file,file.filename={hds}"
    m = ploop_move(tmp_path)
    assert convert_argv(m, storage, bwlimit=None) == [
        "qemu-img",
        "convert",
        "-p",
        "-t",
        "none",
        "-f",
        "parallels",
        "-O",
        "raw",
        "-n",
        "--target-is-zero",
        hds,
        str(tmp_path / "disk.migrating"),
    ]
    assert compare_argv(m, storage) == [
        "qemu-img",
        "compare",
        "-f",
        "parallels",
        "-F",
        "raw",
        hds,
        str(tmp_path / "disk.migrating"),
    ]


def test_a_ploop_image_file_is_read_as_it_is(tmp_path: Path) -> None:
    # a <source file> naming the image itself (or a retained copy already renamed)
    spec = Storage(Runner()).qemu_spec(
        location("ploop", "parallels", path=str(tmp_path / "root.hds"))
    )
    assert (spec.format, spec.filename) == ("parallels", str(tmp_path / "root.hds"))
