"""The storage record: ``<instances_path>/<uuid>/storage.yaml``, one per instance.

Inference (``storagectl.inspect.infer``) runs once; its result is written here, and from then on
storagectl trusts this file instead of inferring again, as ceph-volume's ``simple scan``
does for legacy OSDs. The schema, with an example, is in docs/record.md.

The instance directory is writable by Nova's user, so reading a record is parsing
hostile input: at most 1 MiB, a regular file (no symlink, no FIFO), plain data built
straight from the YAML parser's events (no aliases, no tags beyond str/int/float/bool/null,
bounded nesting), and every field checked - including that each disk belongs to this
instance, so that a hand-edited record cannot point a disk at another instance's file,
LV or RBD image.
"""

from __future__ import annotations

import difflib
import errno
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import yaml

from storagectl import __version__, errors
from storagectl.model.layout import HOSTILE_CONTENT_ERRORS, InstanceLayout, content_error
from storagectl.record.schema import (  # noqa: F401 - re-exported API
    DEVICES,
    MAX_EVENTS,
    MAX_NESTING,
    OBTAINED_HOW,
    RECORDABLE_BACKENDS,
    RECORDABLE_ROLES,
    SCHEMA_VERSION,
    Record,
    _disk_to_dict,
    _Invalid,
    _load_yaml,
    _validate,
)

LOG = logging.getLogger(__name__)

RECORD_NAME = "storage.yaml"
MAX_RECORD_BYTES = 1 << 20
MAX_BACKUP_BYTES = 64 << 20  # --force backs up even an oversized file, within reason
#: Temp files of interrupted writes: ``.storage.yaml.<pid>.<random>``.
TEMP_PREFIX = f".{RECORD_NAME}."


class RecordIOError(errors.StorageCtlError):
    """The record could not be read or written for a system reason (not its content)."""

    template = "cannot %(action)s storage record %(path)s: %(reason)s"


class LayoutNotRecordable(errors.StorageCtlError):
    """An inferred layout that the schema cannot hold (an unknown disk, say)."""

    template = "the layout of instance %(uuid)s cannot be recorded: %(reason)s"


def record_from_layout(
    layout: InstanceLayout, *, evidence: Sequence[str], now: str | None = None
) -> Record:
    """The record of an inferred layout, validated as if read back.

    ``allocated_size`` is not recorded: it grows as the guest writes. Raises
    :class:`LayoutNotRecordable` naming the first field the schema refuses.
    """
    data = {
        "schema_version": SCHEMA_VERSION,
        "instance": {"uuid": layout.uuid, "name": layout.name, "host": layout.host},
        "written": {"at": now or utc_now(), "by": f"storagectl {__version__}"},
        "obtained": {"how": "inferred", "evidence": list(evidence)},
        "disks": [_disk_to_dict(d) for d in layout.disks],
        "retained_sources": [],
    }
    try:
        return _validate(data, expect_uuid=layout.uuid)
    except _Invalid as exc:
        raise LayoutNotRecordable(uuid=layout.uuid, reason=str(exc)) from None


def utc_now() -> str:
    """``2026-11-23T23:59:01Z``, the one timestamp form the schema accepts."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_path(instance_dir: str | os.PathLike[str]) -> Path:
    return Path(instance_dir) / RECORD_NAME


def parse_record(text: str | bytes, *, path: str, expect_uuid: str | None) -> Record:
    """Parse and validate. :class:`errors.RecordInvalid` names ``path`` and the field:
    ``field disks[1].backend: 'zfs' is not one of qcow2, flat, lvm, rbd, ploop, volume``.
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    try:
        if len(raw) > MAX_RECORD_BYTES:
            raise _Invalid(None, f"{len(raw)} bytes, more than the {MAX_RECORD_BYTES} allowed")
        return _validate(_load_yaml(raw), expect_uuid=expect_uuid)
    except _Invalid as exc:
        raise errors.RecordInvalid(path=path, reason=str(exc)) from None
    except (*HOSTILE_CONTENT_ERRORS, yaml.YAMLError) as exc:
        # The instance directory is writable by Nova's user: whatever its content makes
        # a parser raise (a 5,000-digit integer over Python's int-conversion limit, a
        # nesting too deep for the recursion limit ...) is a finding about this record.
        LOG.debug("record %s could not be parsed", path, exc_info=True)
        raise errors.RecordInvalid(path=path, reason=content_error(exc)) from None


def read_record(instance_dir: str | os.PathLike[str], *, expect_uuid: str) -> Record | None:
    """Read and validate ``<instance_dir>/storage.yaml``; None if there is none."""
    path = record_path(instance_dir)
    data = _read_regular(path, limit=MAX_RECORD_BYTES)
    return None if data is None else parse_record(data, path=str(path), expect_uuid=expect_uuid)


def write_record(instance_dir: str | os.PathLike[str], record: Record) -> Path:
    """Write ``storage.yaml`` atomically: readers see the old record or the new, whole.

    A temp file ``.storage.yaml.<pid>.<random>`` is created next to it (O_EXCL, mode
    0640), written, fsynced, renamed over ``storage.yaml``, and the directory is fsynced
    so that the rename survives a power cut. Temp files of writers that died are removed
    afterwards. Callers hold :func:`storagectl.host.locks.instance_lock`.
    """
    path = record_path(instance_dir)
    if Path(instance_dir).name != record.uuid:
        raise errors.UsageError(reason=f"the record of {record.uuid} does not go in {path}")
    text = record.to_yaml()
    parse_record(text, path=str(path), expect_uuid=record.uuid)  # never write what we refuse
    with _open_dir(instance_dir, path, "write") as dir_fd:
        tmp = _write_temp(dir_fd, text.encode("utf-8"), path)
        try:
            os.replace(tmp, RECORD_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except OSError as exc:
            _unlink_quietly(tmp, dir_fd)
            raise RecordIOError(action="write", path=str(path), reason=exc.strerror) from exc
        _remove_stale_temps(dir_fd)
    LOG.info("wrote %s (%d disks)", path, len(record.disks))
    return path


def backup_record(instance_dir: str | os.PathLike[str]) -> Path | None:
    """Copy ``storage.yaml``, valid or not, to ``storage.yaml.<UTC ts>.bak`` (``--force``).

    None if there is no record. The copy appears whole or not at all (a temp file, then
    ``link``, which never overwrites an earlier backup).
    """
    path = record_path(instance_dir)
    data = _read_regular(path, limit=MAX_BACKUP_BYTES)
    if data is None:
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with _open_dir(instance_dir, path, "back up") as dir_fd:
        tmp = _write_temp(dir_fd, data, path)
        try:
            for n in range(1, 100):
                name = f"{RECORD_NAME}.{stamp}{'' if n == 1 else f'.{n}'}.bak"
                try:
                    os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except FileExistsError:
                    continue
                os.fsync(dir_fd)
                return Path(instance_dir) / name
        except OSError as exc:
            raise RecordIOError(action="back up", path=str(path), reason=exc.strerror) from exc
        finally:
            _unlink_quietly(tmp, dir_fd)
    raise RecordIOError(action="back up", path=str(path), reason="too many backups this second")


def diff_records(old: Record, new: Record) -> str:
    """A unified diff of the two records' YAML texts ("" when they are equal)."""
    old_lines, new_lines = old.to_yaml().splitlines(True), new.to_yaml().splitlines(True)
    labels = f"{RECORD_NAME} (recorded)", f"{RECORD_NAME} (new)"
    return "".join(difflib.unified_diff(old_lines, new_lines, *labels))


# --- file handling ------------------------------------------------------------------

_TEMP_RE = re.compile(rf"^{re.escape(TEMP_PREFIX)}(\d+)\.[0-9a-f]+$")


def _read_regular(path: Path, *, limit: int) -> bytes | None:
    """The bytes of a regular file (None if absent), never following a symlink.

    O_NONBLOCK: a FIFO planted in its place must not hang storagectl.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise errors.RecordInvalid(path=str(path), reason="is a symbolic link") from exc
        raise RecordIOError(action="read", path=str(path), reason=exc.strerror) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise errors.RecordInvalid(path=str(path), reason="is not a regular file")
        if st.st_size > limit:
            raise errors.RecordInvalid(
                path=str(path), reason=f"{st.st_size} bytes, more than the {limit} allowed"
            )
        chunks, total = [], 0
        # Up to one byte past the limit: parse_record refuses a file that grew since fstat.
        while total <= limit:
            chunk = os.read(fd, limit + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise RecordIOError(action="read", path=str(path), reason=exc.strerror) from exc
    finally:
        os.close(fd)


@contextmanager
def _open_dir(instance_dir: str | os.PathLike[str], path: Path, action: str) -> Iterator[int]:
    """The instance directory, open: every name below is resolved against it, once."""
    try:
        fd = os.open(instance_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RecordIOError(action=action, path=str(path), reason=exc.strerror) from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _write_temp(dir_fd: int, data: bytes, path: Path) -> str:
    """Create, fill and fsync a new temp file in the directory; return its name."""
    name = f"{TEMP_PREFIX}{os.getpid()}.{secrets.token_hex(6)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o640, dir_fd=dir_fd)
    except OSError as exc:
        raise RecordIOError(action="write", path=str(path), reason=exc.strerror) from exc
    try:
        os.fchmod(fd, 0o640)  # the umask may have removed the group's read bit
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        _unlink_quietly(name, dir_fd)
        raise RecordIOError(action="write", path=str(path), reason=exc.strerror) from exc
    finally:
        os.close(fd)
    return name


def _remove_stale_temps(dir_fd: int) -> None:
    # Only temp files whose writer is gone: a live writer (another storagectl that did
    # not take the lock) keeps its file until it renames it.
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return
    for name in names:
        match = _TEMP_RE.match(name)
        try:
            if match:
                os.kill(int(match.group(1)), 0)  # signal 0: does its writer still exist?
        except ProcessLookupError:
            LOG.info("removing %s, left by an interrupted write", name)
            _unlink_quietly(name, dir_fd)
        except OSError:
            pass  # EPERM: alive, owned by another user


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        LOG.debug("cannot remove %s", name, exc_info=True)
