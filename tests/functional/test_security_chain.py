"""Issue #13 class 1: backing chains are walked whole, every name judged as qemu parses it.

Every attack is a real image made with qemu-img (``-u``: qemu-img does not open the
backing file it writes into the header) in the image cache of a mini node, used by an
instance through a libvirt test-driver domain. The copy step of a migration re-walks the
chain and hands qemu-img a ``json:`` name listing every vetted file.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
import yaml

from storagectl.backends import Storage
from storagectl.host.process import Runner
from storagectl.inspect.verify import copy_source
from storagectl.inspector import chain
from storagectl.migrate.copy import convert_argv
from storagectl.migrate.plan import DiskMove
from storagectl.model.location import location
from tests.functional.conftest import qemu_img

MiB = 1 << 20
SECRET = b"HOST-SECRET-0123456789abcdef"


def host_file(tmp_path: Path) -> Path:
    """A host file no guest may see: the bytes every attack tries to copy."""
    path = tmp_path / "host-secret"
    path.write_bytes(SECRET * (MiB // len(SECRET)))
    return path


def qcow2(path: Path, backing: str | None = None, fmt: str | None = "raw", size=4 * MiB):
    args = ["create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-u", "-b", backing] + (["-F", fmt] if fmt else [])
    qemu_img(*args, str(path), str(size))
    return path


def set_backing_name(path: Path, name: bytes) -> None:
    """Overwrite the backing file name in a qcow2 header (same length or shorter)."""
    data = bytearray(path.read_bytes()[:4096])
    offset, size = struct.unpack_from(">QI", data, 8)
    assert len(name) <= size
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(name)
        fh.seek(16)
        fh.write(struct.pack(">I", len(name)))


def drop_backing_format(path: Path) -> None:
    """Turn the backing-format header extension into an unknown one (qemu ignores those):
    an image that names a backing file without its format, as qemu-img < 5.x wrote."""
    data = path.read_bytes()[:65536]
    at = data.index(struct.pack(">I", 0xE2792ACA))
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(struct.pack(">I", 0x7E570000))


def qcow2_unformatted(path: Path, backing: str) -> Path:
    qcow2(path, backing, fmt="raw")
    drop_backing_format(path)
    return path


def instance_on(mini_node, base: Path, fmt: str = "qcow2") -> tuple[str, Path]:
    """An instance whose root disk is a qcow2 overlay on cache entry ``base``."""
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qcow2(d / "disk", str(base), fmt=fmt)
    mini_node.add(u, [{"fmt": "qcow2", "src": d / "disk"}])
    return u, d


def findings(inst: dict, code: str) -> list[dict]:
    return [f for f in inst["findings"] if f["code"] == code and f["disk"] == "disk"]


def assert_refused_everywhere(mini_node, u: str, d: Path, code: str, severity="critical"):
    inst = mini_node.instance(u)
    hits = findings(inst, code)
    assert hits and {f["severity"] for f in hits} == {severity}, inst["findings"]
    status, out, _ = mini_node.run("persist", u, "-o", "json")
    assert status == 1 and "refused" in out
    assert not (d / "storage.yaml").exists()
    return hits


# -- names qemu would not read as a path in the cache -----------------------------------

PROTOCOL_NAMES = [
    'json:{"driver":"raw","file":{"driver":"file","filename":"%(host)s"}}',
    "nbd://127.0.0.1:10809/export",
    "nbd:127.0.0.1:10809",
    "http://169.254.169.254/latest/user-data",
    "file:%(host)s",
    "ssh://root@localhost%(host)s",
    "gluster+tcp://h/vol/img",
]


@pytest.mark.parametrize("template", PROTOCOL_NAMES)
def test_protocol_names_two_levels_down_are_critical(mini_node, tmp_path, template):
    host = host_file(tmp_path)
    name = template % {"host": host}
    inner = qcow2(mini_node.base / ("b" * 40), name)
    top_base = qcow2(mini_node.base / ("a" * 40), str(inner), fmt="qcow2")
    u, d = instance_on(mini_node, top_base)
    hits = assert_refused_everywhere(mini_node, u, d, "backing-file-outside-cache")
    assert any(name in f["message"] for f in hits)


@pytest.mark.parametrize(
    "name",
    [
        "%(host)s",  # absolute path of a host file
        "../../%(rel)s",  # relative name climbing out of the cache
        "../%(uuid)s/disk.local",  # another instance's disk
    ],
)
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_host_file_at_any_depth_is_critical(mini_node, tmp_path, name, depth):
    host = host_file(tmp_path)
    other = mini_node.new_uuid()
    qemu_img("create", "-q", "-f", "raw", str(mini_node.dir(other) / "disk.local"), str(MiB))
    rel = os.path.relpath(host, mini_node.root)
    bad = name % {"host": host, "rel": rel, "uuid": other}
    below = qcow2(mini_node.base / f"level{depth}", bad)
    for level in range(depth - 1, 0, -1):
        below = qcow2(mini_node.base / f"level{level}", below.name, fmt="qcow2")
    u, d = instance_on(mini_node, below)
    assert_refused_everywhere(mini_node, u, d, "backing-file-outside-cache")


def test_nul_in_a_nested_backing_name_is_a_finding_not_a_crash(mini_node, tmp_path):
    host = host_file(tmp_path)
    inner = qcow2(mini_node.base / "inner", "x" * 40)
    set_backing_name(inner, b"c" * 10 + b"\x00" + str(host).encode()[: 40 - 11])
    top_base = qcow2(mini_node.base / "outer", inner.name, fmt="qcow2")
    u, d = instance_on(mini_node, top_base)
    hits = assert_refused_everywhere(mini_node, u, d, "backing-file-outside-cache")
    assert any("NUL" in f["message"] for f in hits)
    code, _, err = mini_node.run("audit")
    assert code == 2, err  # criticals reported, not a crash (exit 3)


def test_symlink_in_the_cache_to_a_host_file(mini_node, tmp_path):
    host = host_file(tmp_path)
    (mini_node.base / "innocent").symlink_to(host)
    top_base = qcow2(mini_node.base / "outer", "innocent", fmt="raw")
    u, d = instance_on(mini_node, top_base)
    hits = assert_refused_everywhere(mini_node, u, d, "backing-file-outside-cache")
    assert any(str(host) in f["message"] for f in hits)


def test_missing_backing_format_below_the_top_is_critical(mini_node):
    leaf = mini_node.base / "leaf"
    qemu_img("create", "-q", "-f", "raw", str(leaf), str(4 * MiB))
    mid = qcow2_unformatted(mini_node.base / "mid", leaf.name)  # qemu would probe leaf
    u, d = instance_on(mini_node, mid)
    hits = assert_refused_everywhere(mini_node, u, d, "unsafe-image-format")
    assert any("probe" in f["message"] for f in hits)


def test_probed_base_is_followed_into_what_qemu_would_read(mini_node, tmp_path):
    """A base without a recorded format whose bytes are a qcow2 naming a host file."""
    host = host_file(tmp_path)
    probed = qcow2(mini_node.base / "probed", str(host))
    mid = qcow2_unformatted(mini_node.base / "mid", probed.name)
    u, d = instance_on(mini_node, mid)
    inst = mini_node.instance(u)
    got = {f["code"] for f in inst["findings"] if f["severity"] == "critical"}
    assert {"unsafe-image-format", "backing-file-outside-cache"} <= got


def test_too_deep_and_looping_chains_are_critical(mini_node):
    leaf = mini_node.base / "l17"
    qemu_img("create", "-q", "-f", "raw", str(leaf), str(MiB))
    below = leaf
    for level in range(16, 0, -1):
        below = qcow2(
            mini_node.base / f"l{level}", below.name, fmt="raw" if level == 16 else "qcow2"
        )
    u, d = instance_on(mini_node, below)  # disk -> l1 -> ... -> l16 -> l17: 17 levels
    hits = assert_refused_everywhere(mini_node, u, d, "unsafe-image-format")
    assert any("deeper than 16" in f["message"] for f in hits)

    a = qcow2(mini_node.base / "loop-a", "loop-b", fmt="qcow2")
    qcow2(mini_node.base / "loop-b", "loop-a", fmt="qcow2")
    u2, d2 = instance_on(mini_node, a)
    hits = assert_refused_everywhere(mini_node, u2, d2, "unsafe-image-format")
    assert any("loops" in f["message"] for f in hits)


def test_a_clean_nested_chain_is_a_warning_and_persists(mini_node):
    leaf = mini_node.base / "leaf"
    qemu_img("create", "-q", "-f", "raw", str(leaf), str(4 * MiB))
    mid = qcow2(mini_node.base / "mid", leaf.name, fmt="raw")
    u, d = instance_on(mini_node, mid)
    inst = mini_node.instance(u)
    assert {f["code"] for f in inst["findings"]} == {"nested-backing-chain"}
    assert inst["disks"][0]["backing"] == {"path": str(mid), "format": "qcow2"}
    status, _, err = mini_node.run("persist", u)
    assert status == 0, err
    assert (d / "storage.yaml").exists()


# -- the copy step: re-vetted right before qemu-img, every file named explicitly --------


def persisted_nested(mini_node) -> tuple[Path, Path, Path]:
    """A persisted instance: disk -> _base/mid (qcow2) -> _base/leaf (raw)."""
    leaf = mini_node.base / "leaf"
    qemu_img("create", "-q", "-f", "raw", str(leaf), str(4 * MiB))
    subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", str(leaf)],
        check=True,
        capture_output=True,
    )
    mid = qcow2(mini_node.base / "mid", leaf.name, fmt="raw")
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x22 1M 1M", str(mid)],
        check=True,
        capture_output=True,
    )
    u, d = instance_on(mini_node, mid)
    status, _, err = mini_node.run("persist", u)
    assert status == 0, err
    return d / "disk", mid, leaf


def move_to_flat(disk: Path) -> DiskMove:
    return DiskMove(
        name="disk",
        role="root",
        target_dev="vda",
        virtual_size=4 * MiB,
        source=location("qcow2", "qcow2", path=str(disk)),
        dest=location("flat", "raw", path=str(disk)),
        temp_path=str(disk) + ".migrating",
    )


def run_copy(disk: Path) -> bytes:
    move = move_to_flat(disk)
    qemu_img("create", "-q", "-f", "raw", move.temp_path, str(4 * MiB))
    argv = convert_argv(move, Storage(Runner()), bwlimit=None)
    subprocess.run(argv, check=True, capture_output=True)
    return Path(move.temp_path).read_bytes()


def test_copy_names_every_vetted_file_and_gets_the_guest_view(mini_node):
    disk, mid, leaf = persisted_nested(mini_node)
    name = copy_source(str(disk), "qcow2")
    assert name.startswith("json:")
    for path in (disk, mid, leaf):
        assert str(path) in name
    assert '"backing":' in name
    data = run_copy(disk)
    assert data[:MiB] == b"\x11" * MiB and data[MiB : 2 * MiB] == b"\x22" * MiB


@pytest.mark.parametrize(
    "attack",
    ["absolute", "json", "nbd", "symlink", "no-format", "nul"],
)
def test_cache_changed_after_persist_is_refused_before_the_copy(mini_node, tmp_path, attack):
    disk, mid, leaf = persisted_nested(mini_node)
    host = host_file(tmp_path)
    if attack == "absolute":
        qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-b", str(host), "-F", "raw", str(mid))
    elif attack == "json":
        name = f'json:{{"driver":"file","filename":"{host}"}}'
        qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-b", name, "-F", "raw", str(mid))
    elif attack == "nbd":
        qemu_img(
            "rebase", "-q", "-u", "-f", "qcow2", "-b", "nbd://127.0.0.1/x", "-F", "raw", str(mid)
        )
    elif attack == "symlink":
        leaf.unlink()
        leaf.symlink_to(host)
    elif attack == "no-format":
        drop_backing_format(mid)
        qcow2(leaf.with_name("evil"), str(host))
        leaf.unlink()
        os.rename(leaf.with_name("evil"), leaf)  # a probed qcow2 naming the host file
    else:
        set_backing_name(mid, b"le\x00f")
    with pytest.raises(chain.ChainRefused) as refused:
        convert_argv(move_to_flat(disk), Storage(Runner()), bwlimit=None)
    message = str(refused.value)
    assert "\n" not in message and str(disk) in message


def test_header_rewritten_after_vetting_is_not_followed(mini_node, tmp_path):
    """Between the vetting and qemu-img's open the base's header names a host file: the
    explicit ``backing`` objects win, qemu-img reads only the vetted files."""
    disk, mid, leaf = persisted_nested(mini_node)
    host = host_file(tmp_path)
    move = move_to_flat(disk)
    qemu_img("create", "-q", "-f", "raw", move.temp_path, str(4 * MiB))
    argv = convert_argv(move, Storage(Runner()), bwlimit=None)
    qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-b", str(host), "-F", "raw", str(mid))
    subprocess.run(argv, check=True, capture_output=True)
    data = Path(move.temp_path).read_bytes()
    assert SECRET not in data
    assert data[:MiB] == b"\x11" * MiB


def test_a_disk_swapped_for_a_symlink_after_persist_is_refused(mini_node, tmp_path):
    disk, _, _ = persisted_nested(mini_node)
    host = host_file(tmp_path)
    disk.unlink()
    disk.symlink_to(host)
    with pytest.raises(chain.ChainRefused, match="not a regular file"):
        convert_argv(move_to_flat(disk), Storage(Runner()), bwlimit=None)


def test_a_record_naming_a_backing_file_elsewhere_is_not_believed(mini_node, tmp_path):
    """storage.yaml is writable by Nova's user: a record giving the disk a backing file
    in another directory must neither pass inspect nor move the copy's image cache."""
    disk, _, _ = persisted_nested(mini_node)
    host = host_file(tmp_path)
    fake_base = tmp_path / "fake-cache" / "mid"
    fake_base.parent.mkdir()
    qcow2(fake_base, str(host))
    record = disk.parent / "storage.yaml"
    data = yaml.safe_load(record.read_text())
    data["disks"][0]["backing"]["path"] = str(fake_base)
    record.write_text(yaml.safe_dump(data))
    qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-b", str(fake_base), "-F", "qcow2", str(disk))
    inst = mini_node.instance(disk.parent.name)
    assert inst["source"] == "metadata"
    hits = [f for f in inst["findings"] if f["code"] == "backing-file-outside-cache"]
    assert hits and all(f["severity"] == "critical" for f in hits)
    with pytest.raises(chain.ChainRefused, match="not in an image cache"):
        convert_argv(move_to_flat(disk), Storage(Runner()), bwlimit=None)


def test_an_overlay_without_a_backing_format_records_none(mini_node):
    """qemu probes such a base: the layout says so (format null), never the inspector's
    own assumption (a base that probes as a qcow2: test_probed_base_is_followed...)."""
    base = mini_node.base / "plain"
    qemu_img("create", "-q", "-f", "raw", str(base), str(4 * MiB))
    u = mini_node.new_uuid()
    d = mini_node.dir(u)
    qcow2_unformatted(d / "disk", str(base))
    mini_node.add(u, [{"fmt": "qcow2", "src": d / "disk"}])
    inst = mini_node.instance(u)
    assert inst["findings"] == []
    assert inst["disks"][0]["backing"] == {"path": str(base), "format": None}


def test_verify_compares_through_the_vetted_chain_too(mini_node, tmp_path):
    """The verify step's ``qemu-img compare`` opens the source like the copy: every file
    named explicitly, a cache changed since persist refused, a header rewritten after the
    vetting not followed (the copy then compares equal to the guest's view, not the host
    file's)."""
    from storagectl.migrate.verify import compare_argv

    disk, mid, _leaf = persisted_nested(mini_node)
    move = move_to_flat(disk)
    qemu_img("create", "-q", "-f", "raw", move.temp_path, str(4 * MiB))
    subprocess.run(convert_argv(move, Storage(Runner()), bwlimit=None), check=True)
    argv = compare_argv(move, Storage(Runner()))
    assert any(a.startswith("json:") and str(mid) in a for a in argv)
    host = host_file(tmp_path)
    qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-b", str(host), "-F", "raw", str(mid))
    same = subprocess.run(argv, capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr  # the vetted chain, not the host file
    with pytest.raises(chain.ChainRefused):
        compare_argv(move, Storage(Runner()))


def test_verify_into_an_lv_compares_through_the_vetted_chain(mini_node, tmp_path):
    """qcow2 -> LV (a loop device stands in for the LV, a real block device): the compare
    names the vetted chain and the device cut to the disk's size, both as json: names;
    a header rewritten after vetting is not followed, and a wrong byte is still seen."""
    from storagectl.migrate.verify import compare_argv

    disk, mid, _leaf = persisted_nested(mini_node)
    backing = tmp_path / "lv.img"
    backing.write_bytes(b"\xee" * (5 * MiB))  # an extent-rounded LV with a dirty tail
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        move = DiskMove(
            name="disk",
            role="root",
            target_dev="vda",
            virtual_size=4 * MiB,
            source=location("qcow2", "qcow2", path=str(disk)),
            dest=location("lvm", "raw", path=dev, volume_group="vg", volume="v"),
        )
        subprocess.run(convert_argv(move, Storage(Runner()), bwlimit=None), check=True)
        argv = compare_argv(move, Storage(Runner()))
        assert "--image-opts" not in argv
        assert any(a.startswith("json:") and str(mid) in a for a in argv)
        assert any(a.startswith("json:") and dev in a and '"size":4194304' in a for a in argv)
        host = host_file(tmp_path)
        qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-b", str(host), "-F", "raw", str(mid))
        same = subprocess.run(argv, capture_output=True, text=True)
        assert same.returncode == 0, same.stdout + same.stderr
        with open(dev, "r+b") as f:  # one byte of the copy changed: verify must see it
            f.seek(MiB + 7)
            f.write(b"\x00")
            os.fsync(f.fileno())
        differs = subprocess.run(argv, capture_output=True, text=True)
        assert differs.returncode == 1, differs.stdout + differs.stderr
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_preflight_measure_never_opens_an_unvetted_chain(mini_node, tmp_path):
    """``qemu-img measure`` (preflight, also under --dry-run and on a --resume that starts
    before preflight) goes through the same vetting: the vetted chain's size is measured,
    and a cache changed since persist is refused before qemu-img runs."""
    disk, mid, _leaf = persisted_nested(mini_node)
    storage = Storage(Runner())
    loc = location("qcow2", "qcow2", path=str(disk))
    assert storage.data_bytes(loc) >= 2 * MiB  # 1 MiB in mid + 1 MiB in leaf
    name = f'json:{{"driver":"file","filename":"{host_file(tmp_path)}"}}'
    qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-b", name, "-F", "raw", str(mid))
    with pytest.raises(chain.ChainRefused) as refused:
        storage.data_bytes(loc)
    assert str(disk) in str(refused.value) and "\n" not in str(refused.value)
