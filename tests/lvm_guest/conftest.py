"""Guest-only fixtures for the migrate tests: a real libvirtd inside the virtme-ng guest.

The switch step of ``storagectl migrate`` redefines the domain, so these tests need a
libvirtd with the QEMU driver; the host's cannot be reached from the guest. The guest
sees the host's root read-only with writable overlays (/etc, /var, /tmp) and a fresh
/run, so ``tests.env.libvirtd.start_libvirtd`` starts one as on the host - after two
guest-local mounts that only this throwaway guest sees:

* the host's ``/etc/libvirt/qemu`` shows through the /etc overlay: every domain the
  host's libvirtd defines (a thousand after the benchmarks), each loaded at start-up,
  which took minutes under TCG (and races with the host deleting them). An empty tmpfs
  goes over it.
* libvirtd probes the capabilities of every ``qemu-system-*`` it finds (cached in
  /var/cache/libvirt, which is fresh in every guest): about 45 s each under TCG. Only
  x86_64 domains are used, so ``/dev/null`` is bind-mounted over qemu-system-i386,
  which libvirt then skips as not executable.

Instances are never started (migrate moves shut-off instances only), so no nested
guest runs; the domains are merely defined.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.env.ceph import TIME_FACTOR_ENV
from tests.env.libvirtd import Libvirtd, LibvirtdUnavailable, start_libvirtd, stop_libvirtd
from tests.env.lvm import GUEST_DISK_ENV, LvmEnv
from tests.migrate_support import Node, new_node

HOST_DOMAINS = Path("/etc/libvirt/qemu")
#: TCG runs everything about ten times slower: stretch the test fixtures' timeouts
#: (tests/env/ceph.py reads it when the guest's Ceph cluster starts).
GUEST_TIME_FACTOR = "10"
UNUSED_EMULATORS = (Path("/usr/bin/qemu-system-i386"),)


def in_guest() -> bool:
    """True only inside the virtme-ng guest that ``python -m tests.env.vng run-tier`` boots."""
    try:
        cmdline = Path("/proc/cmdline").read_text()
    except OSError:
        return False
    return bool(os.environ.get(GUEST_DISK_ENV)) and "virtme" in cmdline


def hide_host_libvirt_state() -> list[str]:
    """The guest-local mounts of the module docstring; returns what was mounted.

    Refuses outside the guest: on a host these mounts would hide real state.
    """
    if not in_guest():
        raise LibvirtdUnavailable("hide_host_libvirt_state runs only inside the vng guest")
    mounted = []
    if HOST_DOMAINS.is_dir() and any(HOST_DOMAINS.iterdir()):
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(HOST_DOMAINS)], check=True)
        mounted.append(f"tmpfs on {HOST_DOMAINS}")
    for binary in UNUSED_EMULATORS:
        if binary.exists():
            subprocess.run(["mount", "--bind", "/dev/null", str(binary)], check=True)
            mounted.append(f"/dev/null on {binary}")
    return mounted


@pytest.fixture(scope="session", autouse=True)
def _slow_guest_timeouts() -> Iterator[None]:
    if not in_guest():
        yield
        return
    mp = pytest.MonkeyPatch()
    mp.setenv(TIME_FACTOR_ENV, GUEST_TIME_FACTOR)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libvirtd]:
    """This tier's libvirtd: started inside the guest (overrides tests.env.libvirtd's)."""
    if not in_guest():
        pytest.fail(
            f"tests/lvm_guest needs the virtme-ng guest ({GUEST_DISK_ENV} unset or not "
            "virtme): run `.venv/bin/python -m tests.env.vng run-tier`",
            pytrace=False,
        )
    logs = tmp_path_factory.mktemp("libvirtd-logs")
    try:
        hidden = hide_host_libvirt_state()
        daemon = start_libvirtd(logs)
    except (LibvirtdUnavailable, subprocess.CalledProcessError) as exc:
        pytest.fail(f"cannot start libvirtd in the guest: {exc}", pytrace=False)
    out = os.environ.get("STORAGECTL_GUEST_OUT")
    if out:  # the start-up cost under TCG, for the tier's report
        facts = {
            "start_seconds": round(daemon.start_seconds, 1),
            "domain_type": daemon.domain_type,
            "hidden": hidden,
        }
        Path(out, "libvirtd.json").write_text(json.dumps(facts) + "\n")
    yield daemon
    stop_libvirtd(daemon)


@pytest.fixture
def node(
    libvirtd: Libvirtd,
    libvirt_workdir: Path,
    guest_vg: LvmEnv,
    monkeypatch: pytest.MonkeyPatch,
) -> Node:
    """A compute node whose nova.conf names the guest VG (``images_volume_group``).

    The CLI runs in this process or a fork of it, so the LVM environment (the tier's
    lvm.conf) is set in ``os.environ`` for the test's duration.
    """
    for key in ("LVM_SYSTEM_DIR", "LVM_SUPPRESS_FD_WARNINGS"):
        monkeypatch.setenv(key, guest_vg.env[key])
    return new_node(
        libvirtd, libvirt_workdir, libvirt_conf=f"images_volume_group = {guest_vg.vg}\n"
    )
