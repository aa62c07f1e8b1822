"""Walking a disk's whole backing chain as qemu would open it - without qemu.

qemu follows a qcow2 backing file, then that file's backing file, and so on; each name
is parsed by qemu's block layer, where ``json:{...}``, ``nbd://host/x``, ``file:x`` or
any ``proto:`` prefix before the first ``/`` is a protocol, not a path. A chain is safe
only if every name is a plain path whose real path (symlinks resolved) is a regular file
inside the image cache, every level below the disk records its backing format (else
qemu probes it), and the chain ends within :data:`MAX_DEPTH` levels without a loop.

:func:`walk` inspects every level with the bounded inspector and lists what is wrong;
it never stops at the first level. :func:`qemu_json` turns a vetted chain into a
``json:`` filename that names every file explicitly (``backing`` objects down to
``"backing": null``), so qemu-img opens exactly the files that were vetted - never a
name it reads from a header itself.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from storagectl.inspector.checks import BENIGN, Check
from storagectl.inspector.engine import canonical_format, inspect_file
from storagectl.inspector.report import InspectionReport, InspectorError

#: Backing levels below a disk that are followed; a deeper chain is itself critical.
MAX_DEPTH = 16

#: Formats that qemu reads a backing file from (the rest name none, or are refused).
BACKED_FORMATS = frozenset({"qcow2", "qed"})

Inspect = Callable[[str, str], InspectionReport]


def inside(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or below it (both already resolved)."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def not_a_path(name: str) -> str | None:
    """Why qemu would not read ``name`` as a plain file path, or None if it would.

    qemu (block.c ``path_has_protocol``) treats a name with a ``:`` before its first
    ``/`` as ``protocol:rest``; ``json:`` is the pseudo-protocol that carries a whole
    option tree. A NUL ends the name early in qemu's C string (the rest is hidden from
    whoever reads the header as text); control characters and backslashes (how an
    undecodable byte is shown) never occur in a name Nova writes.
    """
    if not name:
        return "it is empty"
    if "\x00" in name:
        return "it contains a NUL byte"
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in name):
        return "it contains control characters"
    if "\\" in name:
        return "it contains a backslash or bytes that are not UTF-8"
    if name.startswith("json:"):
        return "it is a json: pseudo-protocol option tree"
    head = name.split("/", 1)[0]
    if ":" in head:
        return f"it is a {head.split(':', 1)[0] or 'protocol'}: protocol name, not a path"
    return None


@dataclass(frozen=True)
class Link:
    """One file of the chain: level 0 is the disk itself."""

    level: int
    path: str  # as qemu opens it (the domain XML's path, or the header's name joined)
    real: str  # symlinks resolved: what was inspected
    format: str  # the format this level is opened as
    probed: bool  # no format recorded: qemu would probe the file
    report: InspectionReport

    @property
    def effective(self) -> InspectionReport:
        """What qemu would read: for a probed raw file, the container header it holds."""
        if self.probed and self.report.embedded is not None:
            return self.report.embedded
        return self.report


@dataclass(frozen=True)
class Problem:
    check: Check
    level: int  # the level whose header names the offending file
    message: str


@dataclass
class Chain:
    links: list[Link]
    problems: list[Problem] = field(default_factory=list)

    @property
    def top(self) -> Link:
        return self.links[0]

    @property
    def bases(self) -> list[Link]:
        return self.links[1:]

    def failures(self) -> list[tuple[Link, str]]:
        """Every non-benign safety failure of every level (level, ``check: message``)."""
        out = []
        for link in self.links:
            for report in (link.report, link.report.embedded):
                if report is None:
                    continue
                out += [
                    (link, f"{f.check}: {f.message}")
                    for f in report.failures
                    if f.check not in BENIGN
                ]
        return out


def walk(
    path: str,
    declared: str,
    cache_dir: str,
    *,
    top_report: InspectionReport | None = None,
    backing_hint: str | None = None,
    inspect: Inspect = inspect_file,
    max_depth: int = MAX_DEPTH,
) -> Chain:
    """Inspect ``path`` (declared ``declared``) and every backing file below it.

    ``cache_dir`` is the image cache; every backing file must resolve inside it.
    ``backing_hint`` is the disk's backing format from elsewhere (the domain XML's
    ``<backingStore>``), used for level 1 only when the disk's header records none.
    Raises :class:`InspectorError` only when the disk itself cannot be read.
    """
    cache_real = os.path.realpath(cache_dir)
    real = os.path.realpath(path)
    fmt = canonical_format(declared or "raw")
    report = top_report if top_report is not None else inspect(real, fmt)
    chain = Chain([Link(0, path, real, fmt, False, report)])
    seen = {real}
    while True:
        link = chain.links[-1]
        eff = link.effective
        if canonical_format(eff.declared_format) not in BACKED_FORMATS or eff.backing_file is None:
            return chain
        nxt = _next(chain, link, eff, cache_real, seen, backing_hint, inspect, max_depth)
        if nxt is None:
            return chain
        chain.links.append(nxt)
        seen.add(nxt.real)


def _next(
    chain: Chain,
    link: Link,
    eff: InspectionReport,
    cache_real: str,
    seen: set[str],
    hint: str | None,
    inspect: Inspect,
    max_depth: int,
) -> Link | None:
    name = eff.backing_file or ""
    level = link.level

    def problem(check: Check, message: str) -> None:
        chain.problems.append(Problem(check, level, message))

    why = not_a_path(name)
    if why:
        problem(
            Check.BACKING_NOT_A_PATH,
            f"{link.path} names backing file {name!r}, which qemu would not open as a "
            f"file in the image cache: {why}",
        )
        return None
    path = name if os.path.isabs(name) else os.path.join(os.path.dirname(link.path), name)
    real = os.path.realpath(path)
    if not inside(real, cache_real):
        shown = f"{name!r}" + (f" (really {real})" if real != os.path.normpath(path) else "")
        problem(
            Check.BACKING_OUTSIDE_CACHE,
            f"{link.path} names backing file {shown}, outside the image cache {cache_real}",
        )
        return None
    if level >= max_depth:
        problem(
            Check.CHAIN_TOO_DEEP,
            f"the backing chain of {chain.top.path} is deeper than {max_depth} levels",
        )
        return None
    if real in seen:
        problem(Check.CHAIN_LOOP, f"the backing chain of {chain.top.path} loops at {real}")
        return None
    fmt = eff.backing_format or (hint if level == 0 else None)
    if fmt is None and level > 0:
        problem(
            Check.BACKING_FORMAT_MISSING,
            f"{link.path} names backing file {name!r} without its format: qemu would probe it",
        )
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        problem(Check.BACKING_MISSING, f"backing file {path} of {link.path} does not exist")
        return None
    except (OSError, ValueError) as exc:
        problem(Check.BACKING_UNREADABLE, f"cannot stat backing file {path}: {exc}")
        return None
    if not stat.S_ISREG(st.st_mode):
        problem(
            Check.BACKING_NOT_REGULAR,
            f"backing file {path} of {link.path} is not a regular file",
        )
        return None
    declared = canonical_format(fmt or "raw")
    try:
        report = inspect(real, declared)
    except InspectorError as exc:
        problem(Check.BACKING_UNREADABLE, str(exc))
        return None
    return Link(level + 1, path, real, declared, fmt is None, report)


class ChainRefused(InspectorError):
    template = "refusing to let qemu-img open %(path)s: %(reason)s"


def vet(chain: Chain) -> None:
    """Raise :class:`ChainRefused` unless every file of ``chain`` is safe to open."""
    reasons = [p.message for p in chain.problems]
    reasons += [f"{link.real}: {why}" for link, why in chain.failures()]
    for link in chain.bases:
        if link.format not in ("raw", "qcow2"):
            reasons.append(f"{link.real} is {link.format}, not raw or qcow2")
        if link.report.container_header_in_raw and link.format == "raw":
            reasons.append(
                f"{link.real} is opened as raw but begins with a "
                f"{link.report.container_header_in_raw} header"
            )
    if reasons:
        raise ChainRefused(path=chain.top.path, reason="; ".join(reasons))


def qemu_json(chain: Chain) -> str:
    """A ``json:`` filename naming every file of the vetted ``chain`` explicitly."""

    def node(index: int) -> dict:
        link = chain.links[index]
        opts: dict = {"driver": link.format, "file": {"driver": "file", "filename": link.real}}
        if link.format == "qcow2":
            opts["backing"] = node(index + 1) if index + 1 < len(chain.links) else None
        return opts

    return "json:" + json.dumps(node(0), separators=(",", ":"))
