"""Test environment: power cuts of a virtme-ng guest in which storagectl migrates.

kill -9 of storagectl (the STORAGECTL_FAULT matrix) keeps the kernel's page cache: what
storagectl wrote but never flushed still reaches the disk. A power cut does not. This
harness cuts the power of a whole guest: storagectl runs *inside* a virtme-ng guest
(TCG) whose instances_path is an ext4 file system on a virtio disk image and whose LVM
VG is on a second one; the host SIGKILLs the guest's QEMU right after a journal
boundary, then boots a fresh guest on the same two images and checks what survived::

    host (pytest, tests/powerloss)             guest 1 ("crash")             guest 2 ("check")
    mkfs.ext4 fs.img; lvm.img sparse  -->  sysctl: keep dirty pages
                                           libvirtd (domains on fs.img)
                                           2 instances (qcow2 root), refs
                                           sync  (the "before" state)
                                           migrate --to flat  } killed at
                                           migrate --to lvm   } the boundary
                                           controls; OUT/cut-now
    sees OUT/cut-now: SIGKILL qemu  <------'
    boot again on the same images  ------------------------------------> e2fsck -fy; mount
                                                                         libvirtd, vgchange
                                                                         controls, compare
                                                                         audit; --resume or
                                                                         --rollback; compare
    reads OUT/check.json, asserts   <--------------------------------------------'

What is lost, and why the negative control matters: the guest's disks are QEMU
``-drive file=IMG`` (cache=writeback): whatever QEMU has written sits in the *host's*
page cache and survives QEMU's death (the host does not crash). So a cut loses exactly
what the guest kernel had not yet sent to its virtio disk - the guest's dirty pages
(and ext4 metadata not yet committed). The guest is told to keep them:
``vm.dirty_writeback_centisecs=0`` (no periodic writeback), ``vm.dirty_expire_centisecs``
one hour, ``vm.dirty_background_bytes``/``vm.dirty_bytes`` 16 GiB (above its 2 GiB) - so
nothing reaches the disk unless it is flushed (fsync, O_DIRECT, sync). The controls,
written just before the cut, prove it: a file written without fsync and 4 MiB written
to an LV through its page cache must be gone after the cut (a harness that loses
nothing proves nothing), and a file written with fsync must be there. Not modelled: a
device's volatile write cache (the host's page cache stands in for a disk that honours
FLUSH) and torn sector writes.

ext4 commits its journal every 5 s (and at every fsync, of any file): metadata that a
step did not fsync may survive by that side effect, so this matrix is strict about
data (the disk copies: delayed allocation keeps them unallocated until writeback) and
lenient about metadata ordering. libvirt's domain files live on the same ext4 (bind
mount over /etc/libvirt/qemu), as the instances do on a host whose /etc and
instances_path share a file system.

Cost: two guest boots (~40 s each under TCG) per boundary plus libvirtd (its QEMU
capabilities cache is kept in a host directory shared by every boot of the matrix).

    python -m tests.env.powercut run BOUNDARY WORKDIR [--src TREE]   # one boundary, by hand

``--src`` (or ``$STORAGECTL_POWERCUT_SRC``) runs the storagectl package of another
tree (an unpacked ``git archive``) in the guests, to show the matrix on older code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC_ENV = "STORAGECTL_POWERCUT_SRC"
BOUNDARIES = ("copy:after", "verify:after", "switch:after", "cleanup:after")
FS_SIZE = 1024 << 20
LVM_SIZE = 512 << 20
DISK_MIB = 64  # each instance's root disk (qcow2 on a raw base)
DATA_MIB = 24  # of which this much holds data (pattern 5, 1 MiB of pattern 9 on top)
GUEST_MEMORY = "2G"
MOUNT = Path("/tmp/powercut-fs")  # the ext4 image, in the guest
VG = "plvg"
CUT_MARK = "cut-now"
BOOT_TIMEOUT = 1500.0  # one guest phase under TCG: ~6 min alone, 15+ min beside another guest
CONTROL_MIB = 4
_MEMINFO = ("MemFree", "MemAvailable", "Cached", "Dirty", "Writeback")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: What each instance does after the cut, per boundary: both targets get a resume and a
#: rollback across the matrix.
ACTIONS = {
    ("copy:after", "flat"): "resume",
    ("copy:after", "lvm"): "rollback",
    ("verify:after", "flat"): "rollback",
    ("verify:after", "lvm"): "resume",
    ("switch:after", "flat"): "resume",
    ("switch:after", "lvm"): "rollback",
    ("cleanup:after", "flat"): "rollback",
    ("cleanup:after", "lvm"): "resume",
}


class PowercutError(RuntimeError):
    pass


# -- host side -------------------------------------------------------------------------


@dataclass
class Boot:
    phase: str
    wall: float
    cut: bool  # the host killed QEMU (the "crash" boot)
    vng_exit: int | None
    console: Path


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def make_images(work: Path) -> tuple[Path, Path]:
    """A fresh ext4 image (instances_path, libvirt's domains) and an empty LVM image."""
    fs, lvm = work / "fs.img", work / "lvm.img"
    for path, size in ((fs, FS_SIZE), (lvm, LVM_SIZE)):
        path.unlink(missing_ok=True)
        with open(path, "wb") as fh:
            fh.truncate(size)
    _sh("mkfs.ext4", "-q", "-F", "-L", "powercut", str(fs))
    return fs, lvm


def _qemu_pids(image: Path) -> list[int]:
    from tests.env.procs import processes

    return [
        p
        for p, cmd in processes()
        if "qemu-system" in (cmd[0] if cmd else "") and any(str(image) in arg for arg in cmd)
    ]


def boot(
    phase: str,
    boundary: str,
    work: Path,
    images: tuple[Path, Path],
    cache: Path,
    *,
    src: Path | None,
    timeout: float = BOOT_TIMEOUT,
) -> Boot:
    """One guest running ``python -m tests.env.powercut guest PHASE``; for ``crash`` the
    host SIGKILLs it (QEMU included) as soon as OUT/cut-now appears."""
    from tests.env.vng import _relay, find_kernel, find_vng

    out = work / "out"
    out.mkdir(exist_ok=True)
    (out / CUT_MARK).unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    env_lines = [f"export {SRC_ENV}={shlex.quote(str(src))}"] if src else []
    script = out / f"{phase}.sh"
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        f"cd {q(str(REPO))} || exit 126",
        f"export PATH={q(str(REPO / '.venv' / 'bin'))}:/usr/sbin:/usr/bin:/sbin:/bin",
        "export PYTHONDONTWRITEBYTECODE=1",
        *env_lines,
        f"{q(sys.executable)} -u -m tests.env.powercut guest {phase} {boundary} "
        f"{q(str(out))} {q(str(cache))} > {q(str(out / (phase + '.log')))} 2>&1",
        f"echo $? > {q(str(out / (phase + '.status')))}",
    ]
    script.write_text("\n".join(lines) + "\n")
    (out / f"{phase}.status").unlink(missing_ok=True)
    kernel, vng = find_kernel(), find_vng()
    argv = [
        str(vng), "--run", str(kernel), "--disable-kvm", "--cpus", "2", "--memory", GUEST_MEMORY,
        "--disk", str(images[0]), "--disk", str(images[1]),
        "--rwdir", str(out), "--rwdir", str(cache), "--cwd", str(REPO),
        "--exec", f"sh {shlex.quote(str(script))}",
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{vng.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    console = out / f"{phase}.console.log"
    relay = threading.Thread(target=_relay, args=(proc.stdout, console), daemon=True)
    relay.start()
    cut = False
    code: int | None = None
    try:
        deadline = started + timeout
        while True:
            code = proc.poll()
            if code is not None:
                break
            if phase == "crash" and (out / CUT_MARK).exists():
                # The power cut: QEMU (and vng around it) die at once, no flush, no sync.
                os.killpg(proc.pid, signal.SIGKILL)
                for pid in _qemu_pids(images[0]):
                    os.kill(pid, signal.SIGKILL)
                proc.wait()
                cut, code = True, None
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise PowercutError(f"guest {phase} ran over {timeout}s (console: {console})")
            time.sleep(0.05)
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    finally:
        relay.join(timeout=10)
    for _ in range(100):  # the images must be free before the next boot opens them
        if not _qemu_pids(images[0]):
            break
        time.sleep(0.1)
    else:
        raise PowercutError(f"a QEMU still holds {images[0]}")
    return Boot(phase, time.monotonic() - started, cut, code, console)


def run_matrix(boundaries: tuple[str, ...], work: Path, *, src: Path | None = None) -> dict:
    """Two instances (-> flat, -> lvm) killed at each of ``boundaries``, one power cut,
    a reboot, the check; the check report plus timings."""
    bad = [b for b in boundaries if b not in BOUNDARIES]
    if bad or not boundaries:
        raise PowercutError(f"{bad or 'no boundary'}: not from {', '.join(BOUNDARIES)}")
    boundary = ",".join(boundaries)
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    for stale in ("crash.json", "check.json", "crash.status", "check.status"):
        (out / stale).unlink(missing_ok=True)
    images = make_images(work)
    cache = work.parent / "libvirt-cache"
    crash = boot("crash", boundary, work, images, cache, src=src)
    crash_report = _load(out / "crash.json")
    if not crash.cut:
        raise PowercutError(
            f"the crash guest ended without asking for the cut (exit {crash.vng_exit}); "
            f"see {out / 'crash.log'}: {_tail(out / 'crash.log')}"
        )
    check = boot("check", boundary, work, images, cache, src=src)
    report = _load(out / "check.json")
    if report is None:
        raise PowercutError(
            f"the check guest wrote no report; see {out / 'check.log'}: {_tail(out / 'check.log')}"
        )
    report["crash"] = crash_report
    report["wall"] = {"crash": round(crash.wall, 1), "check": round(check.wall, 1)}
    return report


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


# -- guest side ------------------------------------------------------------------------


def _guest_common(out: Path, cache: Path) -> tuple[object, dict]:
    """Sysctls, the ext4 mount, LVM, libvirtd with its domains on the ext4 image."""
    from tests.env.libvirtd import start_libvirtd
    from tests.env.lvm import lvm_environ, write_lvm_conf

    for key, value in (
        ("vm.dirty_writeback_centisecs", "0"),
        ("vm.dirty_expire_centisecs", "360000"),
        # Absolute limits above the guest's memory (a *_bytes setting replaces its
        # *_ratio): background writeback never starts from a threshold. The 80 % ratios
        # were of the *dirtyable* memory, which eight migrations' page cache shrinks;
        # the LV control was written back before a cut that came late (a loaded host).
        ("vm.dirty_background_bytes", str(16 << 30)),
        ("vm.dirty_bytes", str(16 << 30)),
    ):
        _sh("sysctl", "-q", "-w", f"{key}={value}")
    fs_dev, lvm_dev = _guest_disks()
    facts: dict = {"fs_dev": fs_dev, "lvm_dev": lvm_dev}
    MOUNT.mkdir(parents=True, exist_ok=True)
    fsck = subprocess.run(["e2fsck", "-fy", fs_dev], capture_output=True, text=True)
    facts["fsck"] = {"exit": fsck.returncode, "output": fsck.stdout[-2000:]}
    _sh("mount", "-t", "ext4", fs_dev, str(MOUNT))
    domains = MOUNT / "libvirt-qemu"
    domains.mkdir(exist_ok=True)
    _sh("mount", "--bind", str(domains), "/etc/libvirt/qemu")
    Path("/var/cache/libvirt").mkdir(parents=True, exist_ok=True)
    _sh("mount", "--bind", str(cache), "/var/cache/libvirt")
    for binary in ("/usr/bin/qemu-system-i386",):
        if Path(binary).exists():
            _sh("mount", "--bind", "/dev/null", binary)
    _sh("modprobe", "dm_mod")
    system_dir = Path("/tmp/powercut-lvm/etc")
    write_lvm_conf(system_dir, [lvm_dev], activation=True, udev=Path("/run/udev/control").exists())
    lvm_env = lvm_environ(system_dir)
    os.environ.update({k: lvm_env[k] for k in ("LVM_SYSTEM_DIR", "LVM_SUPPRESS_FD_WARNINGS")})
    facts["lvm_dev"] = lvm_dev
    _say(f"mounted {fs_dev} (e2fsck exit {fsck.returncode}); starting libvirtd")
    t0 = time.monotonic()
    daemon = start_libvirtd(out / "libvirtd-logs")
    _say(f"libvirtd up in {time.monotonic() - t0:.1f}s")
    facts["libvirtd_seconds"] = round(time.monotonic() - t0, 1)
    return daemon, facts


def _say(message: str) -> None:
    print(f"[powercut {time.monotonic():9.1f}] {message}", flush=True)


def _guest_disks() -> tuple[str, str]:
    """(ext4 device, LVM device), told apart by size (the images differ)."""
    found: dict[int, str] = {}
    for dev in sorted(Path("/sys/block").glob("vd*")):
        size = int((dev / "size").read_text()) * 512
        found[size] = f"/dev/{dev.name}"
    try:
        return found[FS_SIZE], found[LVM_SIZE]
    except KeyError:
        raise PowercutError(f"disks by size: {found}") from None


def _lvm(*argv: str) -> str:
    return _sh(*argv)


def guest_crash(boundaries: list[str], out: Path, cache: Path) -> None:
    from tests.migrate_support import make_instance, new_node

    daemon, facts = _guest_common(out, cache)
    node = new_node(daemon, MOUNT / "node", libvirt_conf=f"images_volume_group = {VG}\n")
    _lvm("pvcreate", "--yes", "-ff", facts["lvm_dev"])
    _lvm("vgcreate", "--yes", VG, facts["lvm_dev"])
    _lvm("lvcreate", "--yes", "-Zy", "-Wy", "-L", f"{CONTROL_MIB}m", "-n", "control", VG)
    instances = []
    for boundary in boundaries:
        for kind in ("flat", "lvm"):
            uuid = make_instance(
                node, root="qcow2", size_mib=DISK_MIB, data_mib=DATA_MIB, local_mib=None
            )
            disk = node.instances / uuid / "disk"
            ref = out / f"ref-{boundary.replace(':', '-')}-{kind}.raw"
            _sh("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(ref))
            instances.append({"boundary": boundary, "kind": kind, "uuid": uuid, "ref": str(ref)})
    _say("instances made; sync")
    _sh("sync")  # the "before" state is on the disk: the cut may only lose the migration
    for inst in instances:
        t0 = time.monotonic()
        res = node.killed(
            "migrate", inst["uuid"], "--to", inst["kind"], "--yes", fault=inst["boundary"]
        )
        _say(f"migrate --to {inst['kind']} killed at {inst['boundary']}: exit {res.returncode}")
        inst["migrate"] = {
            "exit": res.returncode,
            "stderr": res.stderr[-2000:],
            "seconds": round(time.monotonic() - t0, 1),
        }
        journal = node.instances / inst["uuid"] / "storage.migration.json"
        inst["journal_at_cut"] = (
            json.loads(journal.read_text())["step"] if journal.exists() else None
        )
    # The controls, written last: nothing but the cut comes after them. First the clean
    # page cache is dropped (drop_caches=1 frees clean pages only and writes nothing back):
    # after eight migrations the guest is short of free memory, and reclaim may write
    # dirty pages back - once seen for the unflushed LV control in a run beside another
    # TCG guest. The instances' own unflushed pages are dirty and stay.
    Path("/proc/sys/vm/drop_caches").write_text("1\n")
    pattern = bytes([0x3C]) * (CONTROL_MIB << 20)
    with open(MOUNT / "control-synced", "wb") as fh:
        fh.write(pattern)
        fh.flush()
        os.fsync(fh.fileno())
    fd = os.open(MOUNT, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
    with open(MOUNT / "control-unsynced", "wb") as fh:
        fh.write(pattern)
    # Kept open until the cut: the last close of a block device writes its dirty pages
    # back (blkdev_put -> sync_blockdev), so a closed LV would keep the write anyway.
    held = open(f"/dev/{VG}/control", "r+b")  # noqa: SIM115 - closed by the power cut
    held.write(pattern)
    held.flush()  # out of Python's buffer into the LV's page cache, not to the disk
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    report = {
        # why a control might not be lost: what was dirty / under writeback at the cut
        "meminfo_at_cut": [x for x in meminfo if x.split(":")[0] in _MEMINFO],
        "boundaries": boundaries,
        "instances": instances,
        "setup": facts,
        "storagectl": _storagectl_origin(),
    }
    (out / "crash.json").write_text(json.dumps(report, indent=1))
    (out / CUT_MARK).write_text("now\n")
    time.sleep(3600)  # the host cuts the power now


def guest_check(out: Path, cache: Path) -> None:
    from tests.migrate_support import Node, disk_element

    crash = json.loads((out / "crash.json").read_text())
    daemon, facts = _guest_common(out, cache)
    _lvm("vgchange", "-ay", VG)
    node = Node(MOUNT / "node", daemon)
    pattern = bytes([0x3C]) * (CONTROL_MIB << 20)
    unsynced = MOUNT / "control-unsynced"
    controls = {
        "synced_intact": (MOUNT / "control-synced").exists()
        and (MOUNT / "control-synced").read_bytes() == pattern,
        "unsynced_file_lost": not unsynced.exists() or unsynced.read_bytes() != pattern,
        "unsynced_file_size": unsynced.stat().st_size if unsynced.exists() else None,
    }
    with open(f"/dev/{VG}/control", "rb") as fh:
        controls["unsynced_lv_lost"] = fh.read(len(pattern)) != pattern
    controls["meminfo_at_cut"] = crash.get("meminfo_at_cut")

    def state(uuid: str, ref: str) -> dict:
        el = disk_element(node, uuid)
        fmt = _attr(el, "driver", "type")
        path = _attr(el, "source", "file") or _attr(el, "source", "dev")
        cmp = subprocess.run(
            ["qemu-img", "compare", "-f", fmt, "-F", "raw", path, ref],
            capture_output=True,
            text=True,
        )
        d = node.instances / uuid
        journal = d / "storage.migration.json"
        return {
            "format": fmt,
            "path": path,
            "layout": "old" if fmt == "qcow2" else "new",
            "identical": cmp.returncode == 0,
            "compare": (cmp.stdout + cmp.stderr).strip()[-300:],
            "journal": json.loads(journal.read_text())["step"] if journal.exists() else None,
            "files": sorted(p.name for p in d.iterdir()),
            "lvs": _instance_lvs(uuid),
        }

    befores = {i["uuid"]: state(i["uuid"], i["ref"]) for i in crash["instances"]}
    audit = node.cli("audit", "-o", "json", timeout=600)
    _say(f"audit: exit {audit.returncode}")
    try:
        flagged = _interrupted(json.loads(audit.stdout))
    except ValueError:
        flagged = set()
    results = []
    for inst in crash["instances"]:
        uuid, kind = inst["uuid"], inst["kind"]
        before = befores[uuid]
        _say(f"{kind}: {before['layout']} layout, identical={before['identical']}")
        boundary = inst["boundary"]
        action = ACTIONS[(boundary, kind)]
        res = node.cli("migrate", f"--{action}", uuid, "--yes", timeout=900)
        after = state(uuid, inst["ref"])
        _say(f"{kind}: --{action} exit {res.returncode}; {after['layout']}, {after['identical']}")
        results.append({
            "boundary": boundary, "kind": kind, "uuid": uuid, "action": action,
            "before": before,
            "audit": {"exit": audit.returncode, "interrupted": uuid in flagged,
                      "output": audit.stderr[-1500:]},
            "action_result": {"exit": res.returncode, "output": (res.stdout + res.stderr)[-1500:]},
            "after": after,
        })  # fmt: skip
    report = {
        "setup": facts,
        "controls": controls,
        "instances": results,
        "storagectl": _storagectl_origin(),
    }
    (out / "check.json").write_text(json.dumps(report, indent=1))


def _interrupted(data: object) -> set[str]:
    """Uuids named in audit's ``migration-interrupted`` findings (anywhere in its JSON)."""
    found: set[str] = set()

    def walk(node: object, uuid: str | None) -> None:
        if isinstance(node, dict):
            uuid = node.get("uuid") if isinstance(node.get("uuid"), str) else uuid
            if node.get("code") == "migration-interrupted":
                text = json.dumps(node)
                found.update(u for u in [uuid] if u)
                found.update(w for w in _UUID_RE.findall(text))
            for value in node.values():
                walk(value, uuid)
        elif isinstance(node, list):
            for value in node:
                walk(value, uuid)

    walk(data, None)
    return found


def _instance_lvs(uuid: str) -> list[str]:
    res = subprocess.run(
        ["lvs", "--noheadings", "-o", "lv_name", VG], capture_output=True, text=True
    )
    return sorted(n.strip() for n in res.stdout.split() if n.strip().startswith(uuid))


def _attr(element: str, tag: str, attr: str) -> str | None:
    m = re.search(rf"<{tag} [^>]*{attr}='([^']+)'", element)
    return m.group(1) if m else None


def _storagectl_origin() -> str:
    import storagectl

    return str(Path(storagectl.__file__).resolve().parent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.env.powercut", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="on the host: crash at BOUNDARY,..., cut, check")
    run.add_argument("boundaries", help=f"comma-separated, from {', '.join(BOUNDARIES)}")
    run.add_argument("work", type=Path)
    run.add_argument("--src", type=Path, help="storagectl tree to run in the guests")
    guest = sub.add_parser("guest", help="(inside the guest) one phase")
    guest.add_argument("phase", choices=("crash", "check"))
    guest.add_argument("boundaries")
    guest.add_argument("out", type=Path)
    guest.add_argument("cache", type=Path)
    args = parser.parse_args(argv)
    if args.action == "run":
        src = args.src or (Path(os.environ[SRC_ENV]) if os.environ.get(SRC_ENV) else None)
        boundaries = tuple(args.boundaries.split(","))
        report = run_matrix(boundaries, args.work.resolve(), src=src)
        print(json.dumps(report, indent=1))
        return 0
    if args.phase == "crash":
        guest_crash(args.boundaries.split(","), args.out, args.cache)
    else:
        guest_check(args.out, args.cache)
    return 0


def _use_src() -> None:
    """Import storagectl from ``$STORAGECTL_POWERCUT_SRC`` (another tree), if set."""
    src = os.environ.get(SRC_ENV)
    if src:
        sys.path.insert(0, src)
        # Node.cli runs ``python -m storagectl`` in a subprocess: the same tree there
        os.environ["PYTHONPATH"] = src
        os.environ["PYTHONSAFEPATH"] = "1"  # not the repo (the cwd) before PYTHONPATH


if __name__ == "__main__":
    _use_src()
    sys.exit(main())
