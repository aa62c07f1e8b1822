"""The migration journal: ``<instance_dir>/storage.migration.json``.

Written before and after every step (atomically, fsynced, mode 0600: it holds the
domain's secure XML), so that after a crash at any point ``--resume`` knows which step to
redo and ``--rollback`` has what it needs to restore the instance: the original
persistent domain XML, the original record text and disk.info. Its presence means "a
migration of this instance is in progress"; it is removed when the migration completes or
is rolled back. Example::

    {"version": 1, "step": "copy", "phase": "before", "done": ["plan", "preflight", "create"],
     "plan": {...}, "original_xml": "<domain ...>", "original_record": "...",
     "original_disk_info": "{...}", "started_at": "2026-11-24T00:10:00Z", "pid": 4242}

Test-only fault hook: ``STORAGECTL_FAULT=<step>:<before|after>`` (read by the CLI and
passed in as ``fault``) makes the process SIGKILL itself right after the journal records
that boundary, to prove the invariants of an interrupted migration.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storagectl import errors
from storagectl.host.fsutil import atomic_write, fsync_dir, remove_stale_temps
from storagectl.migrate.plan import Plan

LOG = logging.getLogger(__name__)

JOURNAL_NAME = "storage.migration.json"
VERSION = 1
#: an offline move (the instance is shut off)
STEPS = ("plan", "preflight", "create", "copy", "verify", "switch", "cleanup")
#: a live move (libvirt block copy of the running guest, migrate/live.py)
LIVE_STEPS = ("plan", "preflight", "create", "mirror", "ready", "pivot", "switch", "cleanup")
ALL_STEPS = tuple(dict.fromkeys(STEPS + LIVE_STEPS))


def steps_of(plan: Plan) -> tuple[str, ...]:
    return LIVE_STEPS if plan.options.live else STEPS


PHASES = ("before", "after")
MAX_JOURNAL_BYTES = 16 << 20


class JournalInvalid(errors.StorageCtlError):
    template = "unreadable migration journal %(path)s: %(reason)s"


@dataclass
class Journal:
    plan: Plan
    original_xml: str
    original_record: str
    original_disk_info: str | None = None
    step: str = "plan"
    phase: str = "before"
    done: list[str] = field(default_factory=list)
    started_at: str = ""
    pid: int = 0
    error: str | None = None  # why the last run stopped, for --status

    @property
    def path(self) -> Path:
        return journal_path(self.plan.instance_dir)

    def started(self, step: str) -> bool:
        """Whether ``step`` was begun (it may not have finished)."""
        return step in self.done or self.step == step

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "step": self.step,
            "phase": self.phase,
            "done": list(self.done),
            "started_at": self.started_at,
            "pid": self.pid,
            "error": self.error,
            "plan": self.plan.to_dict(),
            "original_xml": self.original_xml,
            "original_record": self.original_record,
            "original_disk_info": self.original_disk_info,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Journal:
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r} is not {VERSION}")
        if data.get("step") not in ALL_STEPS or data.get("phase") not in PHASES:
            raise ValueError(f"unknown step {data.get('step')!r}:{data.get('phase')!r}")
        return cls(
            plan=Plan.from_dict(data["plan"]),
            original_xml=data["original_xml"],
            original_record=data["original_record"],
            original_disk_info=data.get("original_disk_info"),
            step=data["step"],
            phase=data["phase"],
            done=[s for s in data.get("done") or [] if s in ALL_STEPS],
            started_at=data.get("started_at") or "",
            pid=int(data.get("pid") or 0),
            error=data.get("error"),
        )

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.to_dict(), indent=1).encode(), mode=0o600)

    def mark(self, step: str, phase: str, fault: str | None = None) -> None:
        """Record that ``step`` is at ``phase``; then honour the test-only fault hook."""
        self.step, self.phase = step, phase
        if phase == "after" and step not in self.done:
            self.done.append(step)
        self.save()
        LOG.info("migration of %s: %s %s", self.plan.uuid, step, phase)
        if fault and fault == f"{step}:{phase}":
            LOG.warning("STORAGECTL_FAULT=%s: killing myself (test-only hook)", fault)
            os.kill(os.getpid(), signal.SIGKILL)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        fsync_dir(self.path.parent, missing_ok=True)
        # what a kill -9 in the middle of an atomic write left (the journal, the record,
        # disk.info: each written under this instance's lock, as this one is removed)
        for name in (self.path.name, "storage.yaml", "disk.info"):
            remove_stale_temps(self.path.parent / name)


def journal_path(instance_dir: str | os.PathLike[str]) -> Path:
    return Path(instance_dir) / JOURNAL_NAME


def read_journal(instance_dir: str | os.PathLike[str]) -> Journal | None:
    """The journal of an in-progress migration, or None."""
    path = journal_path(instance_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "a symlink" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise JournalInvalid(path=str(path), reason=why) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise JournalInvalid(path=str(path), reason="not a regular file")
    with os.fdopen(fd, "rb") as handle:
        try:
            raw = handle.read(MAX_JOURNAL_BYTES + 1)
        except OSError as exc:
            raise JournalInvalid(path=str(path), reason=exc.strerror or str(exc)) from exc
    if len(raw) > MAX_JOURNAL_BYTES:
        raise JournalInvalid(path=str(path), reason="too large")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise JournalInvalid(path=str(path), reason=f"not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise JournalInvalid(path=str(path), reason=f"not JSON: {exc.msg} ({where})") from None
    except RecursionError:
        raise JournalInvalid(path=str(path), reason="not JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise JournalInvalid(
            path=str(path), reason=f"expected a JSON object, got {type(data).__name__}"
        )
    try:
        return Journal.from_dict(data)
    except KeyError as exc:
        raise JournalInvalid(path=str(path), reason=f"field {exc.args[0]!r} missing") from None
    except Exception:  # noqa: BLE001 - any shape from_dict cannot take
        LOG.debug("journal %s refused", path, exc_info=True)
        raise JournalInvalid(
            path=str(path), reason="not a storagectl journal (a field of the wrong type or shape)"
        ) from None


def check_fault(value: str | None) -> str | None:
    """Validate a ``STORAGECTL_FAULT`` value (``step:before|after``)."""
    if not value:
        return None
    step, _, phase = value.partition(":")
    if step not in ALL_STEPS or phase not in PHASES:
        raise errors.UsageError(
            reason=f"STORAGECTL_FAULT={value!r}: expected <step>:<before|after>, step one of "
            + ", ".join(ALL_STEPS)
        )
    return value
