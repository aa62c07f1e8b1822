"""Checking a disk layout against reality, without ever trusting guest-writable bytes.

The same checks serve an inferred layout and a persisted record: does each disk exist
(file stat, one ``lvs`` per VG, one ``rbd ls -l`` per pool), how large is it, and is it
safe - read by storagectl's own bounded header inspector, with the format *declared* by
the domain XML or the record:

- a raw disk that begins with an image header (the guest wrote it) is flagged, and what
  that header claims is reported, never used;
- a qcow2 backing file is resolved lexically and opened only when it lies inside the image
  cache; an external data file is flagged;
- ``disk.info`` is cross-checked against the declared format, never believed.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field, replace
from typing import Any

from storagectl import errors
from storagectl.backends import registry
from storagectl.backends.registry import stored
from storagectl.host.config import NovaConfig
from storagectl.inspect.storage import StorageView
from storagectl.inspector import InspectionReport, InspectorError, chain, inspect_file
from storagectl.inspector.checks import BENIGN, Check
from storagectl.model.layout import (
    HOSTILE_CONTENT_ERRORS,
    Backend,
    Backing,
    Code,
    DiskLayout,
    Finding,
    content_error,
)
from storagectl.model.location import Location

DISK_INFO_MAX = 1 << 20  # disk.info is a few hundred bytes; refuse to parse megabytes
# disk.info spellings that mean the same as the XML's driver type.
_DISK_INFO_ALIASES = {"rbd": "raw", "lvm": "raw", "flat": "raw", "parallels": "ploop"}


def inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


@dataclass
class Checker:
    """Per-instance context for the checks; collects findings."""

    uuid: str
    nova: NovaConfig
    storage: StorageView
    local: bool
    findings: list[Finding] = field(default_factory=list)
    #: disk name -> the DiskLayout fields verification observed (see ``seen``)
    observed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inst_dir = os.path.normpath(self.nova.instance_dir(self.uuid))
        self.inst_dir_real = self.storage.resolve(self.inst_dir)[0]
        self.cache_real = self.storage.resolve(os.path.normpath(self.nova.image_cache_path))[0]

    def add(self, code: Code, disk: str | None, message: str) -> None:
        self.findings.append(Finding.of(code, self.uuid, disk, message))

    def observe(self, disk: DiskLayout, **fields: Any) -> None:
        """Remember what verification found about ``disk`` (sizes, backing file)."""
        self.observed.setdefault(disk.name, {}).update(fields)

    def seen(self, disk: DiskLayout) -> DiskLayout:
        """``disk`` with what verification observed about it."""
        found = self.observed.get(disk.name)
        return replace(disk, **found) if found else disk


def verify_disk(disk: DiskLayout, chk: Checker, *, backing_hint: str | None = None) -> None:
    """Existence, sizes and safety of one disk. ``backing_hint``: the XML's backingStore
    format, used only when the qcow2 header records none."""
    if not chk.local:
        return
    if disk.backend is Backend.VOLUME:
        verify_foreign(disk, chk, volume=True)
        return
    # A disk of no backend (Backend.UNKNOWN) is checked as a file: it may be one.
    backend = registry.backend_class(disk.backend.value) if stored(disk.backend) else None
    (backend or registry.for_xml_type("file")).verify(disk, chk, backing_hint=backing_hint)


def _escapes(disk: DiskLayout, path: str, real: str, chk: Checker) -> bool:
    """Flag (critical) a disk of the instance directory whose real path is elsewhere: a
    host file, a device, another instance's disk, or a base other instances share."""
    if inside(real, chk.inst_dir_real):
        return False
    if inside(real, chk.cache_real):
        where = "into the image cache, where writes would change a base other disks read"
    else:
        where = "outside the instance directory and the image cache"
    chk.add(
        Code.DISK_OUTSIDE_INSTANCE_DIR,
        disk.name,
        f"disk {path} ({disk.target}) resolves to {real}, {where}",
    )
    return True


def verify_foreign(disk: DiskLayout, chk: Checker, *, volume: bool) -> None:
    """A file disk that is not instance storage (a file volume on an NFS/Quobyte mount,
    a ``volume-*`` file, a disk the XML puts elsewhere): never touched, but its header
    is inspected like any other - qemu opens it with the same block layer. A qcow2
    volume's snapshot chain lives in its own directory (Cinder's NFS driver)."""
    path = disk.path or ""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return  # a block device path, a missing file: nothing to read here
    real = os.path.realpath(path) if stat.S_ISLNK(st.st_mode) else path
    try:
        st = os.stat(real)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        return
    try:
        report = inspect_file(real, disk.format or "raw")
    except InspectorError as exc:
        chk.add(Code.UNKNOWN_LAYOUT, disk.name, str(exc))
        return
    if volume:
        chk.observe(disk, virtual_size=report.virtual_size)
    embedded = probe_danger(report)
    if embedded:
        chk.add(
            Code.RAW_DISK_HAS_IMAGE_HEADER,
            disk.name,
            f"{path} is used as raw but begins with a {embedded} header",
        )
    _failures_to_findings(disk.name, path, report, chk)
    if report.backing_file is not None and chain.canonical_format(disk.format or "") == "qcow2":
        cache = os.path.dirname(real) if volume else chk.nova.image_cache_path
        walked = chain.walk(
            path, "qcow2", cache, top_report=report, inspect=chk.storage.inspect_cached
        )
        _chain_to_findings(disk, walked, chk)


def verify_file(
    disk: DiskLayout,
    chk: Checker,
    backing_hint: str | None,
    *,
    declared: str | None,
    dir_image: str | None = None,
) -> None:
    """A file disk of the instance directory; ``declared``: the format to inspect it
    as; ``dir_image``: the image file of a disk that is a directory (ploop's root.hds)."""
    path = disk.path or ""
    real, lst = chk.storage.resolve(path)
    if _escapes(disk, path, real, chk):
        return  # never inspected, sized or recorded as this instance's disk
    if dir_image and os.path.isdir(real):
        real = os.path.join(real, dir_image)
        lst = None
        if _escapes(disk, real, os.path.realpath(real), chk):
            return
    try:
        # The lstat of a path that is not a symlink is its stat: one syscall saved per disk.
        st = lst if lst is not None and not stat.S_ISLNK(lst.st_mode) else os.stat(real)
    except FileNotFoundError:
        chk.add(Code.DISK_MISSING, disk.name, f"disk {path} ({disk.target}) does not exist")
        return
    except OSError as exc:
        chk.add(Code.UNKNOWN_LAYOUT, disk.name, f"cannot stat {path}: {exc.strerror}")
        return
    if not stat.S_ISREG(st.st_mode):
        chk.add(
            Code.DISK_OUTSIDE_INSTANCE_DIR,
            disk.name,
            f"disk {path} ({disk.target}) is not a regular file (a device, FIFO or socket)",
        )
        return
    chk.observe(disk, allocated_size=st.st_blocks * 512)
    # Every existing file is inspected, whatever backend it maps to, so that an unsafe
    # format (QED, a VMDK with host-path extents ...) is flagged even where storagectl
    # itself would never open it.
    check_image(disk, real, chk, declared=declared, backing_hint=backing_hint)


def verify_boot_file(disk: DiskLayout, chk: Checker) -> None:
    path = disk.path or ""
    if os.path.dirname(path) == chk.inst_dir and _escapes(disk, path, os.path.realpath(path), chk):
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        chk.add(Code.DISK_MISSING, disk.name, f"{disk.role.value} {disk.path} does not exist")
        return
    chk.observe(disk, virtual_size=st.st_size)
    chk.observe(disk, allocated_size=st.st_blocks * 512)


def check_image(
    disk: DiskLayout,
    real: str,
    chk: Checker,
    *,
    declared: str | None,
    backing_hint: str | None = None,
) -> None:
    """Run the header inspector on one local image (and, for qcow2, on every file of its
    backing chain) and turn what it says into findings."""
    try:
        report = inspect_file(real, declared or "raw")
    except InspectorError as exc:
        chk.add(Code.UNKNOWN_LAYOUT, disk.name, str(exc))
        return
    chk.observe(disk, virtual_size=report.virtual_size)
    embedded = probe_danger(report)
    if embedded:
        hidden = report.embedded.backing_file if report.embedded else None
        extra = f" naming backing file {hidden!r}" if hidden else ""
        chk.add(
            Code.RAW_DISK_HAS_IMAGE_HEADER,
            disk.name,
            f"{disk.path} is used as raw but begins with a {embedded} header{extra}; "
            "a host that probes it would expose that file to the guest",
        )
    _failures_to_findings(disk.name, disk.path or real, report, chk)
    if report.backing_file is not None and declared == "qcow2":
        top = disk.path if disk.path and os.path.dirname(disk.path) == chk.inst_dir else real
        walked = chain.walk(
            top,
            "qcow2",
            chk.nova.image_cache_path,
            top_report=report,
            backing_hint=backing_hint,
            inspect=chk.storage.inspect_cached,
        )
        _chain_to_findings(disk, walked, chk)


def probe_danger(report: InspectionReport) -> str | None:
    """The container format qemu's probe would find at the start of a file read as raw,
    if that can make qemu open other files; None otherwise.

    LUKS is not one: qemu 7.2's probe (crypto/block-luks.c) matches LUKS version 1
    only - cryptsetup's default LUKS2 probes as raw - and a LUKS header names no file;
    opening it needs a key the host does not have. A guest that encrypts its own disk is
    normal.
    """
    fmt = report.container_header_in_raw
    return None if fmt is None or fmt == "luks" else fmt


_CHAIN_CODES = {
    Check.BACKING_NOT_A_PATH: Code.BACKING_FILE_OUTSIDE_CACHE,
    Check.BACKING_OUTSIDE_CACHE: Code.BACKING_FILE_OUTSIDE_CACHE,
    Check.BACKING_NOT_REGULAR: Code.BACKING_FILE_OUTSIDE_CACHE,
    Check.BACKING_MISSING: Code.DISK_MISSING,
    Check.BACKING_UNREADABLE: Code.UNSAFE_IMAGE_FORMAT,
    Check.BACKING_FORMAT_MISSING: Code.UNSAFE_IMAGE_FORMAT,
    Check.CHAIN_TOO_DEEP: Code.UNSAFE_IMAGE_FORMAT,
    Check.CHAIN_LOOP: Code.UNSAFE_IMAGE_FORMAT,
}


def _chain_to_findings(disk: DiskLayout, walked: chain.Chain, chk: Checker) -> None:
    top = walked.top
    if disk.backing is not None:  # from a record: it must name a file in the cache too
        recorded = chk.storage.resolve(disk.backing.path)[0]
        if not inside(recorded, chk.cache_real):
            chk.add(
                Code.BACKING_FILE_OUTSIDE_CACHE,
                disk.name,
                f"the record gives {disk.path} backing file {disk.backing.path}, outside "
                f"the image cache {chk.nova.image_cache_path}",
            )
    name = top.report.backing_file or ""
    first = walked.bases[0] if walked.bases else None
    # The format the chain is opened with: recorded in the header or given by the XML;
    # None when neither says (qemu probes), never the "raw" the inspector assumed.
    first_format = top.report.backing_format or (
        first.format if first is not None and not first.probed else None
    )
    if walked.bases:
        chk.observe(
            disk, backing=Backing(path=os.path.normpath(walked.bases[0].path), format=first_format)
        )
    elif chain.not_a_path(name) is None:
        joined = os.path.join(os.path.dirname(top.path), name)
        chk.observe(disk, backing=Backing(path=os.path.normpath(joined), format=first_format))
    # else: not a path at all (json:, nbd://, a NUL ...): the finding names it, and no
    # reader of disk.backing ever treats it as one.
    for problem in walked.problems:
        chk.add(_CHAIN_CODES[problem.check], disk.name, problem.message)
    for base in walked.bases:
        embedded = probe_danger(base.report)
        if embedded:
            how = (
                "with no backing format recorded, so qemu would probe it"
                if base.probed
                else "recorded as raw"
            )
            chk.add(
                Code.RAW_DISK_HAS_IMAGE_HEADER,
                disk.name,
                f"base {base.path} of {disk.path} is {how}, but begins with a {embedded} header",
            )
        _failures_to_findings(disk.name, base.path, base.report, chk)
        if base.probed and base.report.embedded is not None:
            _failures_to_findings(disk.name, base.path, base.report.embedded, chk)
    if len(walked.bases) > 1 and not walked.problems:
        chk.add(
            Code.NESTED_BACKING_CHAIN,
            disk.name,
            f"base {walked.bases[0].path} of {disk.path} itself has a backing chain "
            f"({' -> '.join(b.path for b in walked.bases[1:])}); every level was inspected",
        )


def _failures_to_findings(name: str, path: str, report: InspectionReport, chk: Checker) -> None:
    for failure in report.failures:
        if failure.check in BENIGN:
            continue  # a Nova overlay has a backing file by design: the chain walk judges it
        if failure.check == Check.QCOW2_DATA_FILE:
            chk.add(
                Code.QCOW2_DATA_FILE,
                name,
                f"{path} is a qcow2 with external data file {report.data_file!r}",
            )
        elif failure.check == Check.FORMAT_MISMATCH:
            chk.add(
                Code.FORMAT_MISMATCH,
                name,
                f"{path} is opened as {report.declared_format}, but its header is not "
                f"{report.declared_format} ({failure.message})",
            )
        else:
            chk.add(
                Code.UNSAFE_IMAGE_FORMAT,
                name,
                f"{path} fails safety check {failure.check}: {failure.message}",
            )


def read_disk_info(inst_dir: str) -> tuple[dict[str, str] | None, str | None]:
    """Nova's ``disk.info``: ``{path: format}``. Returns (mapping or None, error or None).

    The instance directory is writable by Nova's user, so this is hostile input: opened
    without following a symlink and without blocking (a FIFO must not hang the run),
    a regular file only, at most ``DISK_INFO_MAX`` bytes, and whatever the JSON parser
    raises on it (a nesting deep enough for RecursionError, a huge number) is the
    returned error, never an exception.
    """
    path = os.path.join(inst_dir, "disk.info")
    try:
        raw = read_untrusted(path, DISK_INFO_MAX)
    except UntrustedFileError as exc:
        return None, str(exc)
    if raw is None:
        return None, None
    try:
        data = json.loads(raw)
    except HOSTILE_CONTENT_ERRORS as exc:
        return None, f"{path} is not valid JSON: {content_error(exc)}"
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        return None, f"{path} is not a JSON object of path -> format strings"
    return data, None


class UntrustedFileError(errors.StorageCtlError):
    template = "%(path)s %(reason)s"


def read_untrusted(path: str, limit: int) -> bytes | None:
    """The bytes of a file a guest or Nova's user could have planted: None if absent.

    O_NOFOLLOW | O_NONBLOCK, then fstat: a regular file only, at most ``limit`` bytes.
    Raises :class:`UntrustedFileError` (one line naming the file) otherwise.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = (
            "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be read: {exc.strerror}"
        )
        raise UntrustedFileError(path=path, reason=why) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedFileError(path=path, reason="is not a regular file")
        if st.st_size > limit:
            raise UntrustedFileError(path=path, reason=f"is larger than {limit} bytes")
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise UntrustedFileError(path=path, reason=f"is larger than {limit} bytes")
        return data
    except OSError as exc:
        raise UntrustedFileError(path=path, reason=f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


def check_disk_info(disks: list[DiskLayout], chk: Checker) -> None:
    """Cross-check disk.info against the declared formats (never the other way round)."""
    info, error = read_disk_info(chk.inst_dir)
    if error:
        chk.add(Code.DISK_INFO_INVALID, None, error)
    if not info:
        return
    for disk in disks:
        if disk.backend is Backend.VOLUME or disk.format is None:
            continue  # Nova keeps no disk.info entry for a volume
        try:
            loc = Location.of_disk(disk)
            keys = registry.backend_class(loc.backend).disk_info_keys(loc)
        except ValueError:  # no backend's (an unknown file): its path, if any
            keys = [disk.path] if disk.path else []
        recorded = next((info[k] for k in keys if k in info), None)
        if recorded is None:
            continue
        if _DISK_INFO_ALIASES.get(recorded, recorded) != disk.format:
            chk.add(
                Code.FORMAT_MISMATCH,
                disk.name,
                f"the domain XML opens {disk.location} as {disk.format}, but disk.info "
                f"says {recorded}",
            )


def copy_source(path: str, fmt: str) -> str:
    """The name to give ``qemu-img convert`` for a file disk, vetted right before the copy.

    The image cache can change between persist and a migration's copy step, so every
    file qemu-img will open is inspected again here: the disk must be a regular file
    (not a symlink swapped in since), and for qcow2 its whole backing chain is walked
    again inside the image cache of the instance's record and must pass every check.
    The result names every file of the chain explicitly (``json:`` with ``backing``
    objects, the last one ``null``), so qemu-img never opens a name it read from a
    header itself. Raises :class:`chain.ChainRefused` (one line) otherwise.
    """
    fmt = chain.canonical_format(fmt)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path  # qemu-img fails to open it and so opens nothing else: it says so
    except OSError as exc:
        raise chain.ChainRefused(path=path, reason=exc.strerror or str(exc)) from exc
    if not stat.S_ISREG(st.st_mode):
        raise chain.ChainRefused(path=path, reason="the disk is not a regular file")
    report = inspect_file(path, fmt)
    if fmt != "qcow2":
        bad = [f"{f.check}: {f.message}" for f in report.failures if f.check not in BENIGN]
        if bad and fmt != "raw":  # raw is opened as raw: a header in it is only content
            raise chain.ChainRefused(path=path, reason="; ".join(bad))
        return path
    cache, hint = _recorded_cache(path)
    if cache is None and report.backing_file is not None:
        raise chain.ChainRefused(
            path=path,
            reason=f"its header names backing file {report.backing_file!r}, but its record "
            "names none",
        )
    walked = chain.walk(
        path, fmt, cache or os.path.dirname(path), top_report=report, backing_hint=hint
    )
    chain.vet(walked)
    return chain.qemu_json(walked)


def _recorded_cache(path: str) -> tuple[str | None, str | None]:
    """The image cache and backing format the instance's record gives for disk ``path``
    (the record was written only once the chain was found inside the cache)."""
    from storagectl.record.record import read_record  # record imports this module's peers

    inst_dir = os.path.dirname(path)
    try:
        record = read_record(inst_dir, expect_uuid=os.path.basename(inst_dir))
    except errors.StorageCtlError as exc:
        raise chain.ChainRefused(path=path, reason=str(exc)) from exc
    for disk in record.disks if record else ():
        if disk.path == path and disk.backing is not None:
            cache = os.path.dirname(disk.backing.path)
            # Nova's image cache is a directory of instances_path, the parent of the
            # instance directory; a record naming any other place is not believed.
            if os.path.dirname(os.path.realpath(cache)) != os.path.realpath(
                os.path.dirname(inst_dir)
            ):
                raise chain.ChainRefused(
                    path=path,
                    reason=f"its record names backing file {disk.backing.path}, which is not "
                    f"in an image cache of {os.path.dirname(inst_dir)}",
                )
            return cache, disk.backing.format
    return None, None


@dataclass
class CacheEntry:
    """What the cache scan found in one image-cache entry."""

    problems: list[str]
    below: list[str]  # real paths of the cache files its backing chain uses


def inspect_cache_entry(path: str, cache_dir: str, inspect: Any = None) -> CacheEntry:
    """Inspect one entry of the image cache, whatever its name (dot-files included).

    A symlink is followed only inside the cache (leaving it is a problem in itself); a
    container header (what ``force_raw_images=False`` keeps) is judged as qemu would
    open it: its failed checks, its whole backing chain walked and judged as for a
    disk, a backing file named without its format (qemu would probe it). Polyglots
    (qcow2 + ISO 9660, qcow2 + GPT ...) fail the inspector's multiple-formats check.
    """
    inspect = inspect or inspect_file
    cache_real = os.path.realpath(cache_dir)
    try:
        st = os.lstat(path)
    except OSError as exc:
        return CacheEntry([f"cannot stat it: {exc.strerror}"], [])
    real = os.path.join(cache_real, os.path.basename(path))
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(path)
        if not inside(real, cache_real):
            return CacheEntry([f"is a symbolic link to {real}, outside the image cache"], [])
        try:
            st = os.stat(real)
        except OSError as exc:
            return CacheEntry([f"is a symbolic link to {real}: {exc.strerror}"], [])
    if stat.S_ISDIR(st.st_mode):
        return CacheEntry([], [])
    if not stat.S_ISREG(st.st_mode):
        return CacheEntry(["is not a regular file (a device, FIFO or socket)"], [])
    try:
        report = inspect(real, "raw")
    except InspectorError as exc:
        return CacheEntry([str(exc)], [])
    problems = [f"{f.check}: {f.message}" for f in report.failures]
    inner = report.embedded
    if inner is None or probe_danger(report) is None:
        return CacheEntry(problems, [])
    problems += [f"{f.check}: {f.message}" for f in inner.failures if f.check not in BENIGN]
    fmt = chain.canonical_format(inner.declared_format)
    if inner.backing_file is None or fmt not in chain.BACKED_FORMATS:
        return CacheEntry(problems, [])
    if inner.backing_format is None:
        problems.append(
            f"names backing file {inner.backing_file!r} without its format: qemu would probe it"
        )
    walked = chain.walk(real, fmt, cache_dir, top_report=inner, inspect=inspect)
    problems += [p.message for p in walked.problems]
    problems += [f"{link.real}: {why}" for link, why in walked.failures() if link.level > 0]
    for base in walked.bases:
        embedded = probe_danger(base.report)
        if embedded and (base.probed or base.format == "raw"):
            problems.append(
                f"its base {base.real} is read as raw but begins with a {embedded} header"
            )
    return CacheEntry(problems, [b.real for b in walked.bases])
