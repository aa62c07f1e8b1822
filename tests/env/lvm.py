"""Test environment: real lvm2 on a loop device (host) or on the guest's disk (virtme-ng).

How LVM is made metadata-only without touching product argv
-----------------------------------------------------------
This host's kernel has no device-mapper, so ``lvcreate`` fails unless activation
is off. The product (``storagectl.backends.lvm``) must not know that, so its
argv stays exactly what runs in production; the environment selects the
configuration instead. lvm2 reads ``$LVM_SYSTEM_DIR/lvm.conf`` (default
``/etc/lvm``) and nothing from ``/etc/lvm`` when that variable is set, so every
environment here writes its own lvm.conf into a temp dir and hands out
``env`` - a full environment with ``LVM_SYSTEM_DIR`` pointing there - to pass as
``Runner(env=env.env)`` (or ``subprocess.run(..., env=env.env)``, or exported
for the CLI: ``LVM_SYSTEM_DIR=DIR/etc storagectl ...``). That lvm.conf:

* ``global/activation = 0`` on the host (metadata only, no /dev/VG/LV; lvm2
  prints "WARNING: Activation disabled" and lv_attr shows state ``X``);
  ``= 1`` in the guest, which has device-mapper;
* ``devices/global_filter`` accepts only our PV, so other disks and other
  sessions' loop devices are never scanned or touched;
* backup/archive dirs and the lock dir inside the temp dir, ``hints = "none"``
  and ``use_devicesfile = 0``: nothing is written to /etc/lvm, /run/lvm or
  /etc/lvm/devices/system.devices;
* ``activation/monitoring = 0``: no dmeventd is started for thin pools.

``env`` holds the whole ``os.environ`` plus the LVM variables, not only the
latter, because oslo.concurrency's ``execute`` passes ``env_variables`` to Popen
as the *entire* environment (no PATH would mean no ``lvs``).

Entry points
------------
* pytest session fixtures ``lvm_vg`` (host tier, tests/lvm) and ``guest_vg``
  (guest tier, tests/lvm_guest; fails unless run by ``python -m tests.env.vng
  run-tier``, which sets ``STORAGECTL_GUEST_DISK``);
* ``python -m tests.env.lvm create DIR [--size BYTES] [--vg NAME]`` prints the
  environment as JSON; ``python -m tests.env.lvm destroy DIR`` removes the VG,
  detaches the loop device and deletes what ``create`` wrote (for the demo and
  the benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from storagectl.host.process import Runner

#: Set by tests/env/vng.py inside the guest: the block device the tier may wipe.
GUEST_DISK_ENV = "STORAGECTL_GUEST_DISK"
DEFAULT_SIZE = 1024**3
STATE_FILE = "state.json"
# The PV image's name marks our loop devices, so stale ones can be found.
IMAGE_NAME = "storagectl-lvm-pv.img"
_HOST_TOOLS = ("losetup", "pvcreate", "vgcreate", "vgremove", "lvs")


class LvmEnvError(RuntimeError):
    """The LVM test environment cannot be built (the message says what to do)."""


@dataclass
class LvmEnv:
    """One VG on one PV, with the lvm.conf that governs it."""

    root: Path
    vg: str
    device: str  # /dev/loopN on the host, the guest disk in the guest
    system_dir: Path  # LVM_SYSTEM_DIR
    activation: bool
    image: Path | None = None  # the loop device's backing file (host only)
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def runner(self) -> Runner:
        """A product Runner whose lvm2 commands read this environment's lvm.conf."""
        return Runner(env=self.env)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an lvm2 (or any) command directly under this environment."""
        return _run(argv, env=self.env, check=check)

    def describe(self) -> dict[str, object]:
        data = asdict(self)
        del data["env"]
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
        data["LVM_SYSTEM_DIR"] = str(self.system_dir)
        return data


# -- lvm.conf -------------------------------------------------------------------


def lvm_environ(system_dir: Path) -> dict[str, str]:
    """The full environment for commands that must read ``system_dir/lvm.conf``."""
    return {
        **os.environ,
        "LVM_SYSTEM_DIR": str(system_dir),
        # lvm2 warns about every inherited fd ("File descriptor 3 leaked").
        "LVM_SUPPRESS_FD_WARNINGS": "1",
    }


def write_lvm_conf(
    system_dir: Path, devices: Sequence[str], *, activation: bool, udev: bool
) -> Path:
    """Write the private lvm.conf described in the module docstring."""
    system_dir.mkdir(parents=True, exist_ok=True)
    lock_dir = system_dir.parent / "lock"
    lock_dir.mkdir(exist_ok=True)
    accept = ", ".join(f'"a|^{re.escape(d)}$|"' for d in devices)
    # thin_check comes from thin-provisioning-tools, not installed here; without
    # it lvm2 warns on every pool activation. "" skips the check explicitly.
    thin_check = "" if shutil.which("thin_check") is None else "/usr/sbin/thin_check"
    conf = f"""\
# Written by tests/env/lvm.py - see its docstring.
devices {{
    global_filter = [ {accept}, "r|.*|" ]
    use_devicesfile = 0
    obtain_device_list_from_udev = 0
    hints = "none"
}}
global {{
    activation = {int(activation)}
    locking_dir = "{lock_dir}"
    thin_check_executable = "{thin_check}"
}}
backup {{
    backup_dir = "{system_dir / "backup"}"
    archive_dir = "{system_dir / "archive"}"
}}
activation {{
    udev_sync = {int(udev)}
    udev_rules = {int(udev)}
    monitoring = 0
}}
"""
    path = system_dir / "lvm.conf"
    path.write_text(conf)
    return path


# -- host: a loop device, activation disabled ------------------------------------


def create_host_env(root: Path, *, size: int = DEFAULT_SIZE, vg: str | None = None) -> LvmEnv:
    """Sparse file -> loop device -> PV -> VG, all metadata-only; state in ``root``.

    On any failure everything made so far is undone before raising LvmEnvError.
    """
    _require(_HOST_TOOLS)
    if not Path("/dev/loop-control").exists():
        raise LvmEnvError("/dev/loop-control is missing: the kernel has no loop driver")
    sweep_stale_loops()
    root.mkdir(parents=True, exist_ok=True)
    vg = vg or _unique_vg_name()
    image = root / IMAGE_NAME
    env = LvmEnv(
        root=root, vg=vg, device="", system_dir=root / "etc", activation=False, image=image
    )
    env.env = lvm_environ(env.system_dir)
    try:
        with open(image, "wb") as fh:
            fh.truncate(size)
        _save_state(env)  # before losetup: destroy() finds the loop via the image
        env.device = _run(("losetup", "-f", "--show", str(image))).stdout.strip()
        _save_state(env)
        write_lvm_conf(env.system_dir, [env.device], activation=False, udev=False)
        env.run("pvcreate", "--yes", env.device)
        env.run("vgcreate", "--yes", vg, env.device)
    except BaseException as exc:
        _undo(root, exc)
        raise
    return env


def sweep_stale_loops() -> list[str]:
    """Detach loop devices left behind by killed sessions (image deleted or gone)."""
    out = _run(("losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE"), check=False)
    detached = []
    for line in out.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) != 2 or IMAGE_NAME not in parts[1]:
            continue
        back = parts[1].strip()
        path = back.removesuffix("(deleted)").strip()
        stale = back.endswith("(deleted)") or not Path(path).exists()
        if stale and _run(("losetup", "-d", parts[0]), check=False).returncode == 0:
            detached.append(parts[0])
    return detached


# -- guest: the virtme-ng disk, activation enabled -------------------------------


def create_guest_env(root: Path, *, vg: str | None = None) -> LvmEnv:
    """PV + VG on ``$STORAGECTL_GUEST_DISK`` with real activation (inside the guest)."""
    disk = os.environ.get(GUEST_DISK_ENV)
    if not disk:
        raise LvmEnvError(
            f"{GUEST_DISK_ENV} is not set: tests/lvm_guest runs only inside the virtme-ng "
            "guest; run it with `.venv/bin/python -m tests.env.vng run-tier`"
        )
    if not Path(disk).exists() or not stat.S_ISBLK(os.stat(disk).st_mode):
        raise LvmEnvError(f"{GUEST_DISK_ENV}={disk} is not a block device")
    _require(("modprobe", "pvcreate", "vgcreate", "vgremove"))
    for module in ("dm_mod", "dm_thin_pool"):
        result = _run(("modprobe", module), check=False)
        if result.returncode != 0:
            raise LvmEnvError(f"modprobe {module} failed: {result.stderr.strip()}")
    if not Path("/dev/mapper/control").exists():
        raise LvmEnvError("device-mapper is loaded but /dev/mapper/control is missing")
    root.mkdir(parents=True, exist_ok=True)
    env = LvmEnv(
        root=root, vg=vg or _unique_vg_name(), device=disk, system_dir=root / "etc",
        activation=True,
    )  # fmt: skip
    env.env = lvm_environ(env.system_dir)
    # virtme-ng-init starts systemd-udevd: then udev makes /dev/VG/LV as on a
    # real host. Without udevd, lvm2 makes the nodes itself (udev_rules = 0).
    udev = Path("/run/udev/control").exists()
    write_lvm_conf(env.system_dir, [disk], activation=True, udev=udev)
    _save_state(env)
    try:
        env.run("pvcreate", "--yes", "-ff", disk)
        _save_state(env)
        env.run("vgcreate", "--yes", env.vg, disk)
    except BaseException as exc:
        _undo(root, exc)
        raise
    return env


# -- teardown ------------------------------------------------------------------


def destroy(root: Path) -> None:
    """Undo ``create_*_env(root)``: VG, PV, loop device(s), files. Best effort, then raise.

    Every step runs even if an earlier one failed; the first failure is raised
    at the end so leftovers are reported, never silently kept.
    """
    state_path = root / STATE_FILE
    if not state_path.exists():
        return
    state = json.loads(state_path.read_text())
    system_dir = Path(state["system_dir"])
    env = lvm_environ(system_dir)
    problems: list[str] = []
    if state.get("device") and (system_dir / "lvm.conf").exists():
        # vgremove -f also removes the LVs (deactivating them in the guest).
        result = _run(("vgremove", "-f", "--yes", state["vg"]), env=env, check=False)
        if result.returncode != 0 and "not found" not in result.stderr:
            problems.append(f"vgremove {state['vg']}: {result.stderr.strip()}")
        result = _run(("pvremove", "--yes", "-ff", state["device"]), env=env, check=False)
        if result.returncode != 0 and state.get("image") is None:
            problems.append(f"pvremove {state['device']}: {result.stderr.strip()}")
    if state.get("image"):
        # Detach every loop device on our image, not only the recorded one: a
        # crash between losetup and the state update must not leak a device.
        found = _run(("losetup", "-j", state["image"], "-O", "NAME", "-n"), check=False)
        for loop in found.stdout.split():
            result = _run(("losetup", "-d", loop), check=False)
            if result.returncode != 0:
                problems.append(f"losetup -d {loop}: {result.stderr.strip()}")
        Path(state["image"]).unlink(missing_ok=True)
    shutil.rmtree(system_dir, ignore_errors=True)
    shutil.rmtree(root / "lock", ignore_errors=True)
    state_path.unlink(missing_ok=True)
    if problems:
        raise LvmEnvError("LVM environment teardown left things behind: " + "; ".join(problems))


# -- pytest fixtures -----------------------------------------------------------


def _session_env(
    tmp_path_factory: pytest.TempPathFactory,
    dirname: str,
    create: Callable[[Path], LvmEnv],
    what: str,
) -> Iterator[LvmEnv]:
    root = tmp_path_factory.mktemp(dirname)
    try:
        env = create(root)
    except LvmEnvError as exc:
        pytest.fail(f"cannot build the {what} LVM environment: {exc}", pytrace=False)
    try:
        yield env
    finally:
        destroy(root)


@pytest.fixture(scope="session")
def lvm_vg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LvmEnv]:
    """Host tier: a metadata-only VG on a 1 GiB loop device, for the whole session."""
    yield from _session_env(tmp_path_factory, "lvm", create_host_env, "host")


@pytest.fixture(scope="session")
def guest_vg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LvmEnv]:
    """Guest tier: a VG with real activation on the virtme-ng guest's disk."""
    yield from _session_env(tmp_path_factory, "lvm_guest", create_guest_env, "guest")


# -- helpers -------------------------------------------------------------------


def _unique_vg_name() -> str:
    return f"stctl_{os.getpid()}_{secrets.token_hex(3)}"


def _save_state(env: LvmEnv) -> None:
    state = env.describe()
    (env.root / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def _require(tools: Sequence[str]) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise LvmEnvError(
            f"missing commands: {', '.join(missing)} (apt-get install lvm2 util-linux kmod)"
        )


def _run(
    argv: Sequence[str], *, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), env=env, check=check, capture_output=True, text=True, timeout=300
    )


def _undo(root: Path, exc: BaseException) -> None:
    """Tear down a half-built environment; turn a failed command into LvmEnvError."""
    try:
        destroy(root)
    except LvmEnvError as teardown:
        exc.add_note(str(teardown))
    if isinstance(exc, subprocess.CalledProcessError):
        raise LvmEnvError(_describe_failure(exc)) from exc


def _describe_failure(exc: subprocess.CalledProcessError) -> str:
    cmd = " ".join(str(a) for a in exc.cmd)
    return f"`{cmd}` exited {exc.returncode}: {(exc.stderr or '').strip()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.env.lvm", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="make a metadata-only VG on a loop device in DIR")
    create.add_argument("dir", type=Path)
    create.add_argument("--size", type=int, default=DEFAULT_SIZE, help="PV size in bytes")
    create.add_argument("--vg", help="VG name (default: a unique stctl_PID_HEX)")
    destroy_p = sub.add_parser("destroy", help="remove what `create DIR` made")
    destroy_p.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.action == "create":
            env = create_host_env(args.dir.resolve(), size=args.size, vg=args.vg)
            print(json.dumps(env.describe(), indent=2))
            print(f"# export LVM_SYSTEM_DIR={env.system_dir}", file=sys.stderr)
        else:
            destroy(args.dir.resolve())
    except LvmEnvError as exc:
        print(f"--> LvmEnvError: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
