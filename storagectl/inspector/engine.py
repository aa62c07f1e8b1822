"""Run the format inspectors over one disk and build the report.

The declared format (from the libvirt domain XML) decides which header is
parsed; the bytes only decide which *other* formats are present, and every
such presence is reported, never acted on.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

from storagectl.inspector.base import FormatInspector, Location
from storagectl.inspector.checks import Check
from storagectl.inspector.content import GptInspector, IsoInspector, MbrInspector
from storagectl.inspector.luks import LuksInspector
from storagectl.inspector.microsoft import VhdInspector, VhdxInspector
from storagectl.inspector.parallels import ParallelsInspector
from storagectl.inspector.qemu import Qcow2Inspector, QedInspector
from storagectl.inspector.reader import (
    MAX_READ,
    BoundedReader,
    BytesSource,
    FileSource,
    Source,
)
from storagectl.inspector.report import (
    Findings,
    InspectionReport,
    InspectorError,
    SafetyFailure,
)
from storagectl.inspector.virtualbox import VdiInspector
from storagectl.inspector.vmware import VmdkInspector

#: Every inspector, in the order formats are listed in ``detected``.
INSPECTORS: tuple[FormatInspector, ...] = (
    Qcow2Inspector(),
    QedInspector(),
    VmdkInspector(),
    VhdInspector(),
    VhdxInspector(),
    VdiInspector(),
    LuksInspector(),
    ParallelsInspector(),
    IsoInspector(),
    GptInspector(),
    MbrInspector(),
)
REGISTRY: dict[str, FormatInspector] = {inspector.name: inspector for inspector in INSPECTORS}

#: Names libvirt (``<driver type=...>``) or people use for the same formats.
ALIASES = {"vpc": "vhd", "ploop": "parallels", "iso9660": "iso", "dos": "mbr"}

# A parsing slip on hostile bytes must become a failure, not a crash of the
# audit; the fuzz tests assert this net is never actually needed.
_PARSE_ERRORS = (
    struct.error,
    ValueError,
    IndexError,
    KeyError,
    OverflowError,
    UnicodeError,
    TypeError,
)


def canonical_format(name: str) -> str:
    """The inspector name for a declared format ('vpc' -> 'vhd', 'QCOW2' -> 'qcow2')."""
    lowered = name.strip().lower()
    return ALIASES.get(lowered, lowered)


def locate_all(reader: BoundedReader) -> dict[str, Location]:
    """Every format whose signature matches, with where it matched."""
    reader.load()
    found: dict[str, Location] = {}
    for inspector in INSPECTORS:
        location = inspector.locate(reader)
        if location is not None:
            found[inspector.name] = location
    return found


def detect_formats(data: bytes, file_size: int | None = None) -> tuple[str, ...]:
    """Every format whose signature appears in ``data`` (raw is never listed).

    ``data`` is the start of a file; pass ``file_size`` when it is only the
    start, so that trailers (a fixed VHD footer) are not looked for in the
    wrong place.
    """
    return tuple(locate_all(BoundedReader(BytesSource(data, file_size))))


def inspect_bytes(
    data: bytes,
    declared_format: str,
    *,
    file_size: int | None = None,
    path: str = "<bytes>",
) -> InspectionReport:
    """:func:`inspect_file` over bytes in memory (tests, fuzzing, streamed heads)."""
    return inspect_source(BytesSource(data, file_size), declared_format, path)


def inspect_file(path: str | os.PathLike[str], declared_format: str) -> InspectionReport:
    """Inspect the header of a disk file or block device against its declared format.

    Opens ``path`` read-only (``O_RDONLY|O_NOCTTY|O_NONBLOCK|O_NOFOLLOW``), refuses
    anything but a regular file or a block device, and reads at most ``MAX_READ``
    bytes with positional reads. A symlink is refused: callers resolve and vet the
    path first. No path named inside the image is ever opened.

    Raises :class:`InspectorError` if the file cannot be opened or read.
    """
    name = os.fspath(path)
    flags = os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags)
    except OSError as exc:
        why = "is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise InspectorError(path=name, reason=why) from exc
    except ValueError as exc:  # a NUL in the name
        raise InspectorError(path=repr(name), reason=str(exc)) from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            size = st.st_size
        elif stat.S_ISBLK(st.st_mode):
            size = os.lseek(fd, 0, os.SEEK_END)
        elif stat.S_ISDIR(st.st_mode):
            raise InspectorError(path=name, reason="Is a directory")
        else:
            raise InspectorError(path=name, reason="not a regular file or block device")
        return inspect_source(FileSource(fd, size), declared_format, name)
    except OSError as exc:
        raise InspectorError(path=name, reason=exc.strerror or str(exc)) from exc
    finally:
        os.close(fd)


def inspect_source(
    source: Source, declared_format: str, path: str, *, budget: int = MAX_READ
) -> InspectionReport:
    """The shared core of :func:`inspect_file` and :func:`inspect_bytes`.

    ``source`` is anything with ``size`` and ``pread(length, offset)``; tests
    pass a wrapper that records every read (and may lower ``budget``).
    """
    reader = BoundedReader(source, path=path, budget=budget)
    located = locate_all(reader)
    detected = tuple(located)
    fmt = canonical_format(declared_format)
    shared = _shared_failures(located, fmt)

    embedded = None
    if fmt == "raw":
        found = Findings(virtual_size=reader.size)
        at_start = [
            name
            for name, where in located.items()
            if where is Location.START and REGISTRY[name].container
        ]
        if at_start:
            inner = _run(REGISTRY[at_start[0]], reader)
            embedded = _report(path, at_start[0], detected, inner, shared, reader)
    elif fmt not in REGISTRY:
        found = Findings()
        found.fail(
            Check.UNSUPPORTED_DECLARED_FORMAT,
            f"storagectl has no inspector for declared format {declared_format!r}",
        )
    elif fmt not in located:
        found = Findings()
        others = ", ".join(detected) or "no known format"
        found.fail(
            Check.FORMAT_MISMATCH,
            f"declared {declared_format} but the header is not {fmt} (found {others})",
        )
    else:
        found = _run(REGISTRY[fmt], reader)
    return _report(path, declared_format, detected, found, shared, reader, embedded)


def _run(inspector: FormatInspector, reader: BoundedReader) -> Findings:
    found = Findings()
    try:
        inspector.inspect(reader, found)
    except _PARSE_ERRORS as exc:
        found.fail(
            Check.HEADER_UNPARSEABLE,
            f"the {inspector.name} header could not be parsed ({type(exc).__name__})",
        )
    return found


#: Content formats that a real container never carries in its first sectors. oslo.utils'
#: format_inspector refuses such a file ("Multiple formats detected"): a qcow2 that is
#: also an ISO 9660 or a GPT disk is two images in one, read one way by qemu and
#: another by whatever looks at the content.
POLYGLOT_CONTENT = frozenset({"iso", "gpt"})


def _shared_failures(located: dict[str, Location], fmt: str) -> list[SafetyFailure]:
    """The polyglot rule. Only what qemu's probing (or a reader of the first sectors)
    sees counts: signatures at the start, plus a trailer only when it is the declared
    format's own (a fixed VHD). A trailer in another format's file - a guest writing a
    VHD footer into the last block of its disk - is content, never a second format."""
    counted = [
        name
        for name, where in located.items()
        if where is Location.START or (where is Location.END and name == fmt)
    ]
    containers = [name for name in counted if REGISTRY[name].container]
    content = [name for name in counted if name in POLYGLOT_CONTENT]
    if len(containers) >= 2 or (containers and content):
        both = [*containers, *content]
        return [
            SafetyFailure(
                Check.MULTIPLE_FORMATS,
                f"the file carries the signatures of {len(both)} formats at once "
                f"({', '.join(both)}); each would read it a different way",
            )
        ]
    return []


def _report(
    path: str,
    declared: str,
    detected: tuple[str, ...],
    found: Findings,
    shared: list[SafetyFailure],
    reader: BoundedReader,
    embedded: InspectionReport | None = None,
) -> InspectionReport:
    failures = [*shared, *found.failures]
    if reader.exhausted:
        failures.append(
            SafetyFailure(
                Check.READ_LIMIT,
                f"inspecting the header needed more than {reader.budget} bytes; the header is "
                "malformed or hostile",
            )
        )
    return InspectionReport(
        path=path,
        declared_format=declared,
        detected=detected,
        virtual_size=found.virtual_size,
        backing_file=found.backing_file,
        backing_format=found.backing_format,
        data_file=found.data_file,
        failures=tuple(failures),
        embedded=embedded,
    )
