"""Interrupted migrations: what a crashed ``storagectl migrate`` left behind.

A migration holds its instance lock (``<lock_path>/storagectl-<uuid>``, a POSIX record
lock the kernel drops when the holder dies) from the first step to the last, and keeps a
journal (``<instance_dir>/storage.migration.json``) with the pid of the process that
runs it. So:

- journal present, lock held -> **running** (the holder's pid, read with ``F_GETLK``);
- journal present, lock free (or, without a lock path, its pid gone) -> **interrupted**:
  it needs ``migrate --resume`` or ``--rollback``;
- ``<disk>.migrating`` copies with no journal -> left by a migration whose journal is
  gone: nothing can resume them.

Audit reports each interrupted one as ``migration-interrupted`` (warning) with the bytes
its files hold (``.migrating`` copies and ``.retained-*`` sources in the instance
directory; LVM/RBD targets are named, not sized) and the exact commands; the bytes are
also the ``storagectl_migration_interrupted_bytes`` gauge.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from dataclasses import dataclass, field

from storagectl.host.locks import lock_file
from storagectl.model import naming
from storagectl.model.layout import Code, Finding

LOG = logging.getLogger(__name__)

JOURNAL_NAME = "storage.migration.json"  # storagectl.migrate.journal.JOURNAL_NAME
TEMP_SUFFIX = ".migrating"
RETAINED_MARK = ".retained-"
RUNNING, INTERRUPTED = "running", "interrupted"
# struct flock on Linux (x86_64, aarch64): short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (and padding).
_FLOCK = "hhqqi4x"


def lock_holder(lock_path: str, uuid: str) -> int | None:
    """The pid holding the instance lock of ``uuid`` (another process), or None.

    Asked with ``F_GETLK``: nothing is locked, created or changed.
    """
    try:
        fd = os.open(lock_file(lock_path, uuid), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except OSError:
        LOG.debug("F_GETLK on the lock of %s failed", uuid, exc_info=True)
        return None
    finally:
        os.close(fd)
    return pid if l_type != fcntl.F_UNLCK else None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def migration_state(journal_pid: int, lock_path: str | None, uuid: str) -> tuple[str, str]:
    """(``running`` | ``interrupted``, a sentence with the pid and lock) of a journal."""
    if lock_path is not None:
        holder = lock_holder(lock_path, uuid)
        if holder is not None:
            return RUNNING, f"running: pid {holder} holds the instance lock"
        alive = pid_alive(journal_pid)
        gone = f"pid {journal_pid} {'is alive but ' if alive else 'is gone, '}"
        return INTERRUPTED, f"interrupted: {gone}nobody holds the instance lock"
    if pid_alive(journal_pid) and _is_storagectl(journal_pid):
        return RUNNING, f"running: pid {journal_pid} is alive"
    return INTERRUPTED, f"interrupted: pid {journal_pid} is gone"


def _is_storagectl(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"storagectl" in handle.read()
    except OSError:
        return True  # cannot tell: do not call a live process dead


@dataclass
class Leftover:
    """One instance directory with an interrupted migration or stray copies."""

    uuid: str
    instance_dir: str
    journal: bool
    state: str = INTERRUPTED
    detail: str = ""
    step: str | None = None
    files: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)  # LVM/RBD targets, by name
    bytes_held: int = 0

    def message(self, resume: str, rollback: str) -> str:
        held = f"{len(self.files)} file(s) holding {self.bytes_held} bytes"
        if self.volumes:
            held += f" and target(s) {', '.join(self.volumes)}"
        if self.journal:
            return (
                f"migration of {self.uuid} {self.detail} (journal at step {self.step}); "
                f"{held}; finish it with: {resume} or undo it with: {rollback}"
            )
        return (
            f"{', '.join(self.files)} left by a migration whose journal is gone ({held}); "
            "nothing can resume it: check and remove the file(s)"
        )


def allocated(path: str) -> int:
    """Bytes a file (or a ploop directory's files) holds on disk (``st_blocks``, as du)."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    total = st.st_blocks * 512
    if os.path.isdir(path) and not os.path.islink(path):  # a ploop directory
        for root, _dirs, names in os.walk(path):
            for name in names:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:
                    pass
    return total


def _live_alias(inst_dir: str, name: str) -> bool:
    """``<disk>.migrating`` that is the same file as ``<disk>``: the name a guest moved
    live still runs on (migrate/switch.py), no copy of its own."""
    from storagectl.host.fsutil import same_file

    temp = os.path.join(inst_dir, name)
    return same_file(temp, temp[: -len(TEMP_SUFFIX)])


def find_leftovers(instances_path: str, lock_path: str | None = None) -> list[Leftover]:
    """Interrupted migrations and journal-less ``.migrating`` copies under
    ``instances_path`` (running migrations are not reported)."""
    from storagectl.migrate.journal import read_journal  # migrate imports audit

    try:
        names = sorted(d for d in os.listdir(instances_path) if naming.is_uuid(d))
    except OSError:
        return []
    out = []
    for uuid in names:
        inst_dir = os.path.join(instances_path, uuid)
        try:
            entries = sorted(os.listdir(inst_dir))
        except OSError:
            continue
        has_journal = JOURNAL_NAME in entries
        temps = [e for e in entries if e.endswith(TEMP_SUFFIX) and not _live_alias(inst_dir, e)]
        if not has_journal and not temps:
            continue
        item = Leftover(uuid=uuid, instance_dir=inst_dir, journal=has_journal)
        if has_journal:
            try:
                journal = read_journal(inst_dir)
            except Exception as exc:  # noqa: BLE001 - reported, never fatal to an audit
                journal = None
                item.detail = f"has an unreadable journal ({exc})"
            if journal is not None:
                item.state, item.detail = migration_state(journal.pid, lock_path, uuid)
                item.step = f"{journal.step} ({journal.phase})"
                if item.state == RUNNING:
                    continue
                if journal.started("create"):
                    item.volumes = [
                        m.copy_dest.describe() for m in journal.plan.moves if not m.temp_path
                    ]
            kept = [e for e in entries if RETAINED_MARK in e]
            item.files = [os.path.join(inst_dir, e) for e in (*temps, *kept)]
        else:
            item.files = [os.path.join(inst_dir, e) for e in temps]
        item.bytes_held = sum(allocated(f) for f in item.files)
        out.append(item)
    return out


def interrupted_findings(
    instances_path: str, held: dict[str, int], lock_path: str | None = None
) -> list[Finding]:
    """Audit's ``migration-interrupted`` warnings; ``held`` gets uuid -> bytes."""
    out = []
    for item in find_leftovers(instances_path, lock_path):
        held[item.uuid] = item.bytes_held
        out.append(
            Finding.of(
                Code.MIGRATION_INTERRUPTED,
                item.uuid,
                None,
                item.message(
                    f"storagectl migrate --resume {item.uuid}",
                    f"storagectl migrate --rollback {item.uuid}",
                ),
            )
        )
    return out


def prometheus_lines(held: dict[str, int]) -> list[str]:
    """``storagectl_migrations_interrupted`` (always) and the bytes each one holds."""
    lines = [
        "# HELP storagectl_migrations_interrupted Migrations whose process is gone (journal "
        "left: migrate --resume or --rollback), and .migrating copies without a journal.",
        "# TYPE storagectl_migrations_interrupted gauge",
        f"storagectl_migrations_interrupted {len(held)}",
        "# HELP storagectl_migration_interrupted_bytes Bytes held in the instance directory "
        "by an interrupted migration (.migrating copies, .retained-* sources).",
        "# TYPE storagectl_migration_interrupted_bytes gauge",
    ]
    lines += [
        f'storagectl_migration_interrupted_bytes{{instance="{uuid}"}} {n}'
        for uuid, n in sorted(held.items())
    ]
    return lines
