"""Reading one host's audit result for the fleet report: hostile input, never a traceback.

A file holds one of:

- the output of ``storagectl audit -o json`` on one host; the host is named by a
  top-level ``"host"`` key if there is one (a wrapper may add it), else by the file's stem
  (``reports/cn-17.json`` -> ``cn-17``)::

      {"findings": [{"severity": "critical", "code": "disk-missing", ...}],
       "summary": {"status": 2, "instances": 41, ...}}

- a failure wrapper for a host whose audit could not run (unreachable, ...)::

      {"host": "cn-18", "failed": true, "status": 3, "msg": "ssh: connection refused"}

Anything else - not JSON, not UTF-8, the wrong shape, over :data:`MAX_BYTES`, a FIFO or
a device, unreadable - is that host's problem: status 3 (UNKNOWN) with a message naming
the file, as a failed audit is.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from storagectl import errors
from storagectl.audit.audit import UNKNOWN, with_host

MAX_BYTES = 64 << 20  # an audit of thousands of instances is a few MB
SEVERITIES = ("critical", "warning", "info")
_RANK = {"critical": 2, "warning": 1, "info": 0}
# Host names, Ansible inventory names, addresses: printable, no spaces or slashes.
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,252}$")
_CODE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_MSG_MAX = 2000


class SourceInvalid(errors.StorageCtlError):
    template = "%(path)s: %(reason)s"
    exit_code = UNKNOWN


@dataclass(frozen=True)
class HostAudit:
    """One host's audit as the fleet report sees it; ``problem`` says why it is UNKNOWN."""

    host: str
    source: str
    status: int
    findings: tuple[dict[str, Any], ...] = ()
    problem: str | None = None
    instances: int | None = None
    unrecorded: int | None = None  # instances without a record (inferred layouts)
    interrupted: Mapping[str, int] | None = None  # uuid -> bytes; None: not in the file
    retained_bytes: int | None = None
    retained_sources: int | None = None
    retained_unsized: int | None = None
    counts: Mapping[str, int] = field(default_factory=dict)  # severity -> findings

    def count(self, severity: str) -> int:
        return self.counts.get(severity, 0)


def read_audit(path: str) -> HostAudit:
    """The host audit in ``path``; a bad file is a HostAudit with status 3 naming it."""
    host = host_of_file(path)
    try:
        data = load_json(path)
        if not isinstance(data, dict):
            raise SourceInvalid(path=path, reason="not a JSON object")
        if "host" in data:
            host = _host(data["host"], path)
        if data.get("failed") is True:
            msg = _text(data.get("msg")) or "no reason given"
            return HostAudit(
                host=host, source=path, status=UNKNOWN, problem=f"could not audit: {msg}"
            )
        return _audit(host, path, data)
    except SourceInvalid as exc:
        return HostAudit(host=host, source=path, status=UNKNOWN, problem=str(exc))


def host_of_file(path: str) -> str:
    """The file's stem, anything unprintable replaced (``cn-17.json`` -> ``cn-17``)."""
    stem = os.path.basename(path).removesuffix(".json")
    return "".join(c if c.isprintable() else "?" for c in stem) or "?"


def load_json(path: str) -> Any:
    """The JSON in a regular file of at most :data:`MAX_BYTES` (O_NONBLOCK: a FIFO put in
    the reports directory is refused, not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceInvalid(path=path, reason=f"cannot read: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceInvalid(path=path, reason="not a regular file")
        if st.st_size > MAX_BYTES:
            raise SourceInvalid(path=path, reason=f"{st.st_size} bytes, over {MAX_BYTES}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SourceInvalid(path=path, reason=f"cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(raw) > MAX_BYTES:  # grew while read
        raise SourceInvalid(path=path, reason=f"over {MAX_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SourceInvalid(path=path, reason=f"not UTF-8 text (byte {exc.start})") from exc
    except ValueError as exc:
        raise SourceInvalid(path=path, reason=f"not JSON: {exc}") from exc
    except RecursionError as exc:  # [[[[...]]]] nested past Python's stack
        raise SourceInvalid(path=path, reason="not JSON: nested too deeply") from exc


def _audit(host: str, path: str, data: dict[str, Any]) -> HostAudit:
    findings, summary = data.get("findings"), data.get("summary")
    if not isinstance(findings, list) or not isinstance(summary, dict):
        raise SourceInvalid(
            path=path,
            reason="neither the output of storagectl audit -o json (findings, summary) "
            'nor a failure wrapper {"host": ..., "failed": true, "msg": ...}',
        )
    status = summary.get("status")
    if type(status) is not int or not 0 <= status <= UNKNOWN:
        raise SourceInvalid(path=path, reason=f"summary.status {_text(status)} is not 0-3")
    out = tuple(_finding(f, i, host, path) for i, f in enumerate(findings))
    counts = {s: sum(1 for f in out if f["severity"] == s) for s in SEVERITIES}
    # A file saying "ok" over critical findings is not believed.
    status = max(status, max((_RANK[f["severity"]] for f in out), default=0))
    problem = None
    if status == UNKNOWN:
        reasons = summary.get("errors")
        text = "; ".join(_text(r) for r in reasons) if isinstance(reasons, list) else ""
        problem = f"audit incomplete: {text or 'no reason given'}"
    by_source = _dict(summary, "instances_by_source", path) or {}
    interrupted = _dict(summary, "interrupted_migrations", path)
    sources, held, unsized = _retained(summary, path)
    return HostAudit(
        host=host,
        source=path,
        status=status,
        findings=out,
        problem=problem,
        instances=_count(summary, "instances", path),
        unrecorded=_count(by_source, "inferred", path),
        interrupted=(
            None
            if interrupted is None
            else {u: _count(interrupted, u, path) or 0 for u in interrupted}
        ),
        retained_sources=sources,
        retained_bytes=held,
        retained_unsized=unsized,
        counts=counts,
    )


def _retained(summary: dict[str, Any], path: str) -> tuple[int | None, int | None, int | None]:
    """(sources, bytes, unsized) over the instances of ``summary.retained_sources``;
    Nones when the file has none (written by a storagectl from before it)."""
    retained = _dict(summary, "retained_sources", path)
    if retained is None:
        return None, None, None
    items = [_dict(retained, uuid, path) or {} for uuid in retained]
    return tuple(  # type: ignore[return-value]
        sum(_count(item, key, path) or 0 for item in items)
        for key in ("sources", "bytes", "unsized")
    )


def _finding(f: Any, i: int, host: str, path: str) -> dict[str, Any]:
    where = f"findings[{i}]"
    if not isinstance(f, dict):
        raise SourceInvalid(path=path, reason=f"{where} is not an object")
    if f.get("severity") not in SEVERITIES:
        raise SourceInvalid(path=path, reason=f"{where}.severity is not one of {SEVERITIES}")
    if not isinstance(f.get("code"), str) or not _CODE.match(f["code"]):
        raise SourceInvalid(path=path, reason=f"{where}.code is not a finding code")
    for key in ("instance", "disk", "message"):
        if f.get(key) is not None and not isinstance(f[key], str):
            raise SourceInvalid(path=path, reason=f"{where}.{key} is not a string")
    out = with_host({k: v for k, v in f.items() if k != "host"}, host)
    if isinstance(f.get("host"), str) and f["host"] != host:
        out["audit_host"] = f["host"]  # the libvirt host name, where it differs
    return out


def _host(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _HOST.match(value):
        raise SourceInvalid(path=path, reason=f"host {_text(value)!r} is not a host name")
    return value


def _dict(data: Mapping[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise SourceInvalid(path=path, reason=f"summary {key!r} is not an object")
    return value


def _count(data: Mapping[str, Any], key: str, path: str) -> int | None:
    value = data.get(key)
    if value is not None and (type(value) is not int or value < 0):
        raise SourceInvalid(path=path, reason=f"summary {key!r} is not a count")
    return value


def _text(value: Any) -> str:
    """A value from the file as one printable line of bounded length."""
    try:
        text = value if isinstance(value, str) else json.dumps(value)
    except (ValueError, RecursionError):
        text = "(unprintable)"
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= _MSG_MAX else text[:_MSG_MAX] + "..."
