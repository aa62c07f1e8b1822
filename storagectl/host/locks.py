"""Per-instance and per-host locks, so two storagectl runs never act on the same thing.

The locks are oslo.concurrency external locks (fasteners ``InterProcessLock``): a file
``<lock_path>/storagectl-<uuid>`` locked with ``fcntl.lockf``. The kernel drops such a
lock when its holder exits, so a killed storagectl never leaves a stale lock behind; the
lock *file* stays, empty and harmless.

POSIX record locks belong to a process, not to a file descriptor: a second lock taken by
the same process always "succeeds", and releasing it drops the first one too. Each
external lock is therefore paired with an in-process semaphore of the same name
(oslo.concurrency's ``Semaphores``), which makes threads of one process exclude each
other as well, and means a nested lock on the same name fails instead of silently
breaking the outer one.

Usage::

    with instance_lock("/var/lib/storagectl/locks", uuid):
        write_record(instance_dir, record)
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from storagectl import errors
from storagectl.model import naming

LOG = logging.getLogger(__name__)

LOCK_PREFIX = "storagectl"
#: fasteners polls a held lock at a growing interval capped here (seconds).
_MAX_POLL = 0.1
_HOST_LOCK_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class LockError(errors.StorageCtlError):
    """The lock file cannot be created or locked at all (not: someone else holds it)."""

    template = "cannot use lock file %(path)s: %(reason)s"


@functools.cache
def _lockutils() -> Any:
    # Imported on first use: oslo.concurrency (with oslo.config) costs ~0.1 s at start-up.
    from oslo_concurrency import lockutils

    return lockutils


@functools.cache
def _semaphores() -> Any:
    """One registry for the whole process: the semaphores are what excludes threads."""
    return _lockutils().Semaphores()


@contextmanager
def instance_lock(lock_path: str, uuid: str, *, wait: float = 0) -> Iterator[None]:
    """Hold the lock of one instance: ``<lock_path>/storagectl-<uuid>``.

    ``wait=0`` fails at once with :class:`errors.LockBusy` if another process (or
    thread) holds it; ``wait > 0`` polls for up to that many seconds first.
    """
    if not naming.is_uuid(uuid):
        raise errors.UsageError(reason=f"{uuid!r} is not an instance UUID")
    uuid = uuid.lower()
    with _locked(lock_path, uuid, f"instance {uuid}", wait):
        yield


@contextmanager
def host_lock(lock_path: str, name: str, *, wait: float = 0) -> Iterator[None]:
    """Hold a host-wide lock such as ``audit``: ``<lock_path>/storagectl-host-<name>``."""
    if not _HOST_LOCK_NAME.match(name):
        raise errors.UsageError(reason=f"{name!r} is not a valid host lock name")
    with _locked(lock_path, f"host-{name}", f"host lock {name}", wait):
        yield


def lock_file(lock_path: str, name: str) -> str:
    """The path of the lock file for ``name`` (what oslo.concurrency builds)."""
    return os.path.join(lock_path, f"{LOCK_PREFIX}-{name}")


@contextmanager
def _locked(lock_path: str, name: str, what: str, wait: float) -> Iterator[None]:
    if wait < 0:
        raise errors.UsageError(reason=f"lock wait must be >= 0, not {wait}")
    path = lock_file(lock_path, name)
    _ensure_lock_dir(lock_path)
    deadline = time.monotonic() + wait
    sem = _semaphores().get(path)
    # threading.Semaphore.acquire(timeout=0) does not wait, which is what wait=0 means.
    if not sem.acquire(timeout=wait):
        raise errors.LockBusy(what=what, path=path)
    try:
        ext = _lockutils().external_lock(name, LOCK_PREFIX, lock_path)
        remaining = max(0.0, deadline - time.monotonic())
        try:
            if wait > 0:
                gotten = ext.acquire(
                    blocking=True, delay=0.01, max_delay=_MAX_POLL, timeout=remaining
                )
            else:
                gotten = ext.acquire(blocking=False)
        except (OSError, RuntimeError) as exc:  # fasteners wraps odd errnos in ThreadError
            raise LockError(path=path, reason=_reason(exc)) from exc
        if not gotten:
            raise errors.LockBusy(what=what, path=path)
        LOG.debug("acquired lock %s", path)
        try:
            yield
        finally:
            ext.release()
            LOG.debug("released lock %s", path)
    finally:
        sem.release()


def _reason(exc: BaseException) -> str:
    """Why a lock file could not be used, as a sentence: oslo.concurrency opens the lock
    file by its *bytes* path, so ``str(OSError)`` would show ``b'/var/lib/...'``."""
    while not isinstance(exc, OSError) and exc.__cause__ is not None:
        exc = exc.__cause__  # fasteners wraps the OSError
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


def _ensure_lock_dir(lock_path: str) -> None:
    # Only root's storagectl should be able to create or hold these locks; a directory
    # that already exists is left as the operator made it.
    try:
        os.makedirs(lock_path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise LockError(
            path=lock_path, reason=f"cannot create the lock directory: {exc.strerror}"
        ) from exc
