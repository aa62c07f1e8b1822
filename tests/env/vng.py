"""Test environment: the virtme-ng guest that runs the tests/lvm_guest tier.

This host's kernel has no device-mapper, so real LVM (activation, /dev/VG/LV,
thin pools) is tested inside a throwaway guest: virtme-ng (``vng``) boots
Debian's own kernel (/boot/vmlinuz-*) with the host's root shared read-only
plus writable overlays (/etc, /var, /tmp, ...). ONE boot serves the whole tier::

    .venv/bin/python -m tests.env.vng run-tier [--vng-out DIR] [pytest args]

boots ``vng --run KERNEL --disable-kvm --cpus 2 --memory 3G --disk IMG --rwdir OUT
--exec 'sh OUT/guest.sh'`` with a fresh sparse 4 GiB disk image (``/dev/vda`` in
the guest, named by ``STORAGECTL_GUEST_DISK``), and exits with pytest's exit
status. Inside, ``guest.sh`` runs ``.venv/bin/python -m pytest -p
no:cacheprovider -p no:hypothesispytest --junitxml=OUT/junit.xml tests/lvm_guest
...`` with
PYTHONDONTWRITEBYTECODE=1 (the repo is read-only in the guest); the tier's
``guest_vg`` fixture (tests/env/lvm.py) loads dm_mod/dm_thin_pool and makes
the PV and VG.

Facts this relies on (checked on the CI machine kind, Debian 12, 2 cores):

* KVM hangs silently at boot here: always ``--disable-kvm`` (TCG). A boot takes
  about 35 s of the ~40 s wall; one vCPU per host core (TCG is one thread per vCPU).
* ``vng`` runs ``virtme-run`` through PATH: the venv's bin dir goes first in PATH.
* virtme-ng-init starts systemd-udevd, so /dev/VG/LV appear as on a real host.
* ``vng --exec`` returns the command's exit status, and guest.sh also writes it
  to ``OUT/exit_status``; run-tier exits non-zero if either says so, or if the
  guest never got as far as writing it (tests/lvm/test_vng_runner.py checks a
  failing test makes run-tier exit 1).

``python -m tests.env.vng exec -- CMD ...`` runs any shell command in the same
guest setup (used to capture tests/fixtures/lvm/guest.json).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
GUEST_DISK = "/dev/vda"  # the first --disk, as virtme-ng attaches it
DEFAULT_TESTS = "tests/lvm_guest"
DEFAULT_MEMORY = "3G"  # pytest + qemu-img + lvm2 fit in 1G; TCG costs nothing extra
DEFAULT_CPUS = 2
DEFAULT_DISK_SIZE = 4 * 1024**3
#: the whole lvm_guest tier under TCG: ~30 min on a loaded 2-core host (its live moves run
#: a nested TCG guest)
DEFAULT_TIMEOUT = 3600
#: Exit status when the guest never reported one (boot failed, timeout, crash).
NO_STATUS = 125


class GuestError(RuntimeError):
    """The guest could not be started at all."""


@dataclass
class GuestRun:
    exit_code: int  # what run-tier exits with
    vng_exit_code: int | None  # None on timeout
    guest_status: int | None  # written by guest.sh; None if it never finished
    boot_seconds: float | None  # guest uptime when guest.sh started
    command_seconds: float | None  # guest.sh's command, by the guest's clock
    wall_seconds: float
    out_dir: Path

    def summary(self) -> str:
        def fmt(value: float | None) -> str:
            return "?" if value is None else f"{value:.1f}s"

        return (
            f"vng guest: boot {fmt(self.boot_seconds)}, command {fmt(self.command_seconds)}, "
            f"wall {self.wall_seconds:.1f}s; guest status {self.guest_status}, "
            f"vng exit {self.vng_exit_code} -> exit {self.exit_code} (output in {self.out_dir})"
        )


def find_kernel() -> Path:
    """``$STORAGECTL_VNG_KERNEL``, else the newest /boot/vmlinuz-* (with its modules)."""
    chosen = os.environ.get("STORAGECTL_VNG_KERNEL")
    if chosen:
        return Path(chosen)
    kernels = [
        k
        for k in Path("/boot").glob("vmlinuz-*")
        if Path("/lib/modules", k.name.removeprefix("vmlinuz-")).is_dir()
    ]
    if not kernels:
        raise GuestError(
            "no /boot/vmlinuz-* with /lib/modules/<version>: "
            "apt-get install --no-install-recommends linux-image-amd64"
        )

    def version_key(path: Path) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", path.name)]

    return max(kernels, key=version_key)


def find_vng() -> Path:
    candidate = Path(sys.executable).parent / "vng"
    if candidate.exists():
        return candidate
    found = shutil.which("vng")
    if found is None:
        raise GuestError("vng not found: .venv/bin/pip install virtme-ng")
    return Path(found)


def boot(
    command: str,
    *,
    out_dir: Path,
    memory: str = DEFAULT_MEMORY,
    cpus: int = DEFAULT_CPUS,
    disk_size: int = DEFAULT_DISK_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
) -> GuestRun:
    """Boot one guest that runs shell ``command`` (in the repo dir) and report how it went.

    The guest's console (the command's output) streams to our stdout. The disk
    image lives in a temp dir that is always deleted; ``out_dir`` is kept.
    """
    if shutil.which("qemu-system-x86_64") is None:
        raise GuestError("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    kernel, vng = find_kernel(), find_vng()
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("exit_status", "boot_uptime", "end_uptime"):
        (out_dir / stale).unlink(missing_ok=True)
    script = out_dir / "guest.sh"
    script.write_text(_guest_script(command, out_dir))
    work = Path(tempfile.mkdtemp(prefix="storagectl-vng-"))
    disk = work / "disk.img"
    with open(disk, "wb") as fh:
        fh.truncate(disk_size)
    argv = [
        str(vng), "--run", str(kernel), "--disable-kvm",
        "--cpus", str(cpus), "--memory", memory,
        "--disk", str(disk), "--rwdir", str(out_dir), "--cwd", str(REPO),
        "--exec", f"sh {shlex.quote(str(script))}",
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{vng.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.monotonic()
    vng_code: int | None
    try:
        print("+ " + shlex.join(argv), file=sys.stderr, flush=True)
        # Relay the console through a pipe: writing to our stdout directly, part
        # of virtme reopens it with its own file offset, and output redirected to
        # a file overwrites itself.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        relay = threading.Thread(
            target=_relay, args=(proc.stdout, out_dir / "console.log"), daemon=True
        )
        relay.start()
        try:
            vng_code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # qemu is in vng's process group (new session): kill them together.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            vng_code = None
            print(f"vng guest: killed after {timeout}s", file=sys.stderr)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            relay.join(timeout=10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - started
    status = _read_number(out_dir / "exit_status")
    booted = _read_number(out_dir / "boot_uptime")
    ended = _read_number(out_dir / "end_uptime")
    return GuestRun(
        exit_code=_combine(vng_code, None if status is None else int(status)),
        vng_exit_code=vng_code,
        guest_status=None if status is None else int(status),
        boot_seconds=booted,
        command_seconds=None if booted is None or ended is None else ended - booted,
        wall_seconds=wall,
        out_dir=out_dir,
    )


def _relay(stream: IO[bytes] | None, log_path: Path) -> None:
    """Copy the guest console to our stdout and to OUT/console.log."""
    if stream is None:
        return
    sink = sys.stdout.buffer
    with open(log_path, "wb") as log:
        for chunk in iter(lambda: stream.read1(65536), b""):
            log.write(chunk)
            sink.write(chunk)
            sink.flush()


def pytest_command(tests: Sequence[str], pytest_args: Sequence[str], out_dir: Path) -> str:
    """The shell command guest.sh runs for ``run-tier``."""
    argv = [
        str(REPO / ".venv" / "bin" / "python"), "-m", "pytest",
        "-p", "no:cacheprovider",  # the repo is read-only in the guest
        # Importing hypothesis takes ~1.4 s on the host and over a minute under
        # TCG; the guest tier does not use it.
        "-p", "no:hypothesispytest",
        # A test stuck for 20 min (a nested TCG guest, a libvirt call without a timeout)
        # dumps every thread's stack to the console, so a tier timeout says where.
        "-o", "faulthandler_timeout=1200",
        f"--junitxml={out_dir / 'junit.xml'}",
        *tests, *pytest_args,
    ]  # fmt: skip
    return shlex.join(argv)


def _guest_script(command: str, out_dir: Path) -> str:
    out = shlex.quote(str(out_dir))
    venv_bin = shlex.quote(str(REPO / ".venv" / "bin"))
    return f"""\
#!/bin/sh
# Written by tests/env/vng.py; runs as the guest's --exec command.
cut -d' ' -f1 /proc/uptime > {out}/boot_uptime
cd {shlex.quote(str(REPO))} || exit 126
export PATH={venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONDONTWRITEBYTECODE=1
export STORAGECTL_GUEST_DISK={GUEST_DISK}
export STORAGECTL_GUEST_OUT={out}
if [ ! -b {GUEST_DISK} ]; then
    echo "guest.sh: {GUEST_DISK} is not a block device; disks: $(ls /dev/vd* /dev/sd* 2>&1)"
    echo 124 > {out}/exit_status
    exit 124
fi
{command}
status=$?
cut -d' ' -f1 /proc/uptime > {out}/end_uptime
echo "$status" > {out}/exit_status
exit "$status"
"""


def _combine(vng_code: int | None, guest_status: int | None) -> int:
    # Any failure anywhere is a failure; pytest's own status wins when it has one.
    if guest_status is None:
        return vng_code if vng_code else NO_STATUS
    if guest_status != 0:
        return guest_status
    if vng_code:
        print(f"vng guest: command passed but vng exited {vng_code}", file=sys.stderr)
        return vng_code
    if vng_code is None:
        return NO_STATUS
    return 0


def _read_number(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.env.vng", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", required=True)
    tier = sub.add_parser(
        "run-tier",
        help="run tests/lvm_guest in one guest; other arguments go to pytest",
    )
    run = sub.add_parser("exec", help="run a shell command in the guest: exec -- CMD ...")
    for p in (tier, run):
        p.add_argument("--vng-out", type=Path, help="shared dir for junit.xml etc.")
        p.add_argument("--vng-memory", default=DEFAULT_MEMORY)
        p.add_argument("--vng-cpus", type=int, default=DEFAULT_CPUS)
        p.add_argument("--vng-timeout", type=float, default=DEFAULT_TIMEOUT)
    tier.add_argument(
        "--vng-tests",
        action="append",
        help=f"test path(s) to run instead of {DEFAULT_TESTS} (repeatable)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER)
    args, rest = parser.parse_known_args(argv)
    out_dir = args.vng_out or Path(tempfile.mkdtemp(prefix="storagectl-vng-out-"))
    out_dir = out_dir.resolve()
    if args.action == "run-tier":
        if rest[:1] == ["--"]:
            rest = rest[1:]
        command = pytest_command(args.vng_tests or [DEFAULT_TESTS], rest, out_dir)
    else:
        if rest:
            parser.error(f"unrecognised arguments: {' '.join(rest)}")
        words = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not words:
            parser.error("exec needs a command")
        command = " ".join(words)
    try:
        result = boot(
            command,
            out_dir=out_dir,
            memory=args.vng_memory,
            cpus=args.vng_cpus,
            timeout=args.vng_timeout,
        )
    except GuestError as exc:
        print(f"--> GuestError: {exc}", file=sys.stderr)
        return NO_STATUS
    print(result.summary(), file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
