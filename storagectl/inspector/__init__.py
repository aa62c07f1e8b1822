"""Pure-Python disk image header inspection - to detect danger, never to pick a format.

storagectl takes a disk's format from the libvirt domain XML and nowhere
else: Nova's format CVEs (CVE-2015-7548, CVE-2016-2140, CVE-2022-47951,
CVE-2024-32498) all came from letting qemu-img *probe* bytes a guest can
write. This package reads a bounded number of header bytes, parses the header
of the *declared* format with named safety checks, and lists every other
format whose signature is present::

    report = inspect_file("/var/lib/nova/instances/u/disk", "qcow2")
    report.backing_file, [f.check for f in report.failures]
    # -> ('/var/lib/nova/instances/_base/3f2a...', ['qcow2-backing-file'])

No external command runs and no path named inside an image is ever opened.
One module per format family; ``engine`` ties them together.
"""

from __future__ import annotations

from storagectl.inspector.engine import detect_formats, inspect_bytes, inspect_file
from storagectl.inspector.reader import MAX_READ
from storagectl.inspector.report import InspectionReport, InspectorError, SafetyFailure

__all__ = [
    "MAX_READ",
    "InspectionReport",
    "InspectorError",
    "SafetyFailure",
    "detect_formats",
    "inspect_bytes",
    "inspect_file",
]
