"""What an inspection returns: the report, its safety failures, and the one error.

The report is plain data. It never tells a caller which format a disk *is* -
that always comes from the libvirt domain XML (``declared_format``) - only what
the bytes claim and which safety checks the declared format's header failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from storagectl import errors
from storagectl.inspector.checks import Check


class InspectorError(errors.ImageInspectionError):
    """The file itself could not be read (missing, unreadable, not a disk).

    A header that is merely malformed is *not* an error: it is reported as a
    :class:`SafetyFailure` so that an audit can list it next to the others.
    """

    template = "cannot inspect %(path)s: %(reason)s"


@dataclass(frozen=True)
class SafetyFailure:
    """One failed safety check.

    ``check`` is a stable name that callers and tests match on (for example
    ``qcow2-backing-file``); ``message`` is one sentence for an operator.
    """

    check: Check
    message: str


@dataclass(frozen=True)
class InspectionReport:
    """What the header bytes of one disk claim, judged against its declared format."""

    path: str
    declared_format: str
    detected: tuple[str, ...]
    virtual_size: int | None
    backing_file: str | None = None
    backing_format: str | None = None
    data_file: str | None = None
    failures: tuple[SafetyFailure, ...] = ()
    embedded: InspectionReport | None = None

    @property
    def container_header_in_raw(self) -> str | None:
        """Name of the container format whose header starts a disk declared raw.

        A guest owns every byte of a raw disk, including the first sector, so
        it can write a qcow2 (or vmdk, ...) header there. That is harmless as
        long as nobody probes the format - and a strong sign of an attack if
        one is found. ``embedded`` holds what that header claims.
        """
        if self.declared_format.strip().lower() != "raw" or self.embedded is None:
            return None
        return self.embedded.declared_format


@dataclass
class Findings:
    """Mutable scratch pad one format inspector fills in; the engine freezes it."""

    virtual_size: int | None = None
    backing_file: str | None = None
    backing_format: str | None = None
    data_file: str | None = None
    failures: list[SafetyFailure] = field(default_factory=list)

    def fail(self, check: Check, message: str) -> None:
        # One entry per check name: a second reason for the same check adds
        # nothing an operator can act on.
        if all(existing.check != check for existing in self.failures):
            self.failures.append(SafetyFailure(check, message))
