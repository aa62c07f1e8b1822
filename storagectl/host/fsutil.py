"""Small file-system helpers shared by the record store, audit and migrate."""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new content, whole.

    A temp file in the same directory is written, fsynced and renamed over ``path``; the
    directory is fsynced so the rename survives a crash.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def remove_stale_temps(path: str | os.PathLike[str]) -> list[str]:
    """Remove the temp files :func:`atomic_write` of ``path`` left behind by a process
    killed while it wrote (``.NAME.XXXXXXXX``, mkstemp's suffix). Only under the lock of
    whatever writes ``path``: a temp file of a live writer would go too."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(rf"^\.{re.escape(name)}\.[A-Za-z0-9_]{{8}}$")
    removed = []
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for entry in entries:
        if pattern.match(entry):
            try:
                os.unlink(os.path.join(directory, entry))
            except FileNotFoundError:
                continue
            removed.append(entry)
    if removed:
        fsync_dir(directory)
    return removed


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` are two names (hard links) of one regular file - never
    through a symlink (``lstat``), never one name twice."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (
        os.fspath(a) != os.fspath(b)
        and stat.S_ISREG(sa.st_mode)
        and stat.S_ISREG(sb.st_mode)
        and (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
    )


def fsync_dir(directory: str | os.PathLike[str], *, missing_ok: bool = False) -> None:
    """fsync a directory, so the names created, renamed or removed in it survive a crash.

    The one place a directory is fsynced. With ``missing_ok`` a directory that cannot be
    opened (gone, or not readable) is skipped instead of raising."""
    try:
        fd = os.open(os.fspath(directory) or "/", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or block device by name: its data, then (a file) its metadata.

    On a block device (an LV) this writes back the device's page cache and sends the
    device a cache flush, like the ``fdatasync`` that ``qemu-img -t none`` ends with.
    """
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_cache(path: str | os.PathLike[str]) -> None:
    """Drop the (clean) cached pages of a file or block device, so the next read comes
    from the device: what ``verify`` compares is then what is on the media. Call it
    after :func:`fsync_path` (dirty pages are not dropped)."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def direct_io_supported(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (an existing file or block device) opens with O_DIRECT.

    False only when the file system refuses O_DIRECT (EINVAL: tmpfs before Linux 6.6,
    some FUSE and network file systems) - the case where Nova's ``convert_image`` falls
    back from ``-t none`` to ``-t writeback``. A path that cannot be opened for any
    other reason (not there yet) says True: qemu-img will report the real error.
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno != errno.EINVAL
    os.close(fd)
    return True


_OCTAL = re.compile(r"\\([0-7]{3})")


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """``(mount point, filesystem type)`` of each line of ``/proc/self/mountinfo``.

    A line is ``ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE
    SUPER_OPTIONS``; the mount point escapes space, tab, newline and backslash as octal.

    >>> parse_mountinfo("36 35 0:40 / /var/lib/nova/instances rw,relatime shared:1 - "
    ...                 "nfs4 filer:/nova rw,vers=4.2\\n")
    [('/var/lib/nova/instances', 'nfs4')]
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        dash = fields.index("-", 6)
        if dash + 1 >= len(fields):
            continue
        point = _unescape(fields[4])
        mounts.append((point, fields[dash + 1]))
    return mounts


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the filesystem ``path`` lives on (the longest mount point above its
    real path; the last one mounted wins a tie), or None if it cannot be told."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            mounts = parse_mountinfo(fh.read())
    except OSError:
        return None
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for point, fstype in mounts:
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return best[1] if best else None


#: File systems whose files are memory: no device behind them to bypass or flush.
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def memory_backed(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is on tmpfs / ramfs (``/proc/self/mountinfo``)."""
    return filesystem_type(os.path.dirname(os.path.abspath(os.fspath(path)))) in (
        MEMORY_FILESYSTEMS
    )
