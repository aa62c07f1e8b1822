"""The storage record's schema: the :class:`Record` type and its strict validation.

Split from ``record.py`` (file handling and the public API), which re-exports
everything callers use. Reading a record is parsing hostile input (the instance
directory is writable by Nova's user): plain data is built straight from the YAML
parser's events, aliases/tags/duplicate keys are refused, nesting and size are bounded,
and every field is checked, including that each disk belongs to this instance.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import yaml

from storagectl.backends import registry
from storagectl.backends.registry import stored
from storagectl.model import naming
from storagectl.model.layout import Backend, Backing, DiskLayout, InstanceLayout, Role
from storagectl.record.canonical import (
    _SCALAR_TAGS,
    _STR,
    _T,
    NotCanonical,
    _resolve,
    load_canonical,
)

SCHEMA_VERSION = 1
MAX_NESTING = 32  # a record needs 4 levels; retained_sources entries get the rest
MAX_EVENTS = 50_000  # YAML parse events; a disk takes about 30
OBTAINED_HOW = ("inferred", "migrated", "manual")
RECORDABLE_BACKENDS = tuple(b.value for b in Backend if b is not Backend.UNKNOWN)
RECORDABLE_ROLES = tuple(r.value for r in Role if r is not Role.UNKNOWN)
DEVICES = ("disk", "cdrom", "floppy", "lun", "kernel")
_HEADER = "# storagectl storage record, schema in docs/record.md. Written by storagectl.\n"


@dataclass(frozen=True)
class Record:
    """One instance's storage record, as read from or written to ``storage.yaml``."""

    uuid: str
    name: str
    host: str
    written_at: str
    written_by: str
    obtained_how: str
    evidence: tuple[str, ...]
    disks: tuple[DiskLayout, ...]
    retained_sources: tuple[dict, ...] = ()

    def __post_init__(self) -> None:
        for name in ("evidence", "disks", "retained_sources"):  # lists in, tuples kept
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "instance": {"uuid": self.uuid, "name": self.name, "host": self.host},
            "written": {"at": self.written_at, "by": self.written_by},
            "obtained": {"how": self.obtained_how, "evidence": list(self.evidence)},
            "disks": [_disk_to_dict(d) for d in self.disks],
            "retained_sources": copy.deepcopy(list(self.retained_sources)),
        }

    def to_yaml(self) -> str:
        return _HEADER + yaml.dump(self.to_dict(), **_DUMP_OPTIONS)

    def same_layout(self, other: Record) -> bool:
        """Equal but for when and by whom it was written ("identical -> unchanged")."""
        mine, theirs = self.to_dict(), other.to_dict()
        del mine["written"], theirs["written"]
        return mine == theirs

    def to_instance_layout(self, state: str) -> InstanceLayout:
        """The layout storagectl acts on once the record exists (``source="metadata"``)."""
        disks = [replace(d) for d in self.disks]  # copies: the record stays as read
        return InstanceLayout(self.uuid, self.name, self.host, state, "metadata", disks)


# --- schema -------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
_KINDS = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number"}
_KINDS |= {str: "a string", list: "a list", dict: "a mapping", bytes: "binary data"}
_KINDS[datetime] = "an unquoted timestamp (quote it)"

Check = Callable[[Any, str], Any]  # (value, field name) -> value, or raise _Invalid


class _Invalid(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"field {field}: {message}" if field else message)


def _disk_to_dict(d: DiskLayout) -> dict[str, Any]:
    backend = getattr(d.backend, "value", d.backend)
    cls = registry.backend_class(backend) if stored(backend) else None
    location = cls.record_location(d) if cls else {"path": d.path}  # a volume: its path
    out = {"name": d.name, "role": getattr(d.role, "value", d.role), "target": d.target}
    out |= {"backend": backend, "format": d.format, "device": d.device, "location": location}
    out["virtual_size"] = d.virtual_size
    if cls and cls.has_backing(backend):
        out["backing"] = d.backing.to_dict() if d.backing else None
    return out


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    def ignore_aliases(self, data: Any) -> bool:
        return True  # the loader refuses aliases, so never emit one


# Block style for the structure, flow style for leaves ({path: ...}): a disk's location
# stays on one line, which keeps diffs short. Never wrap a long path.
_DUMP_OPTIONS = {"Dumper": _Dumper, "default_flow_style": None, "sort_keys": False}
_DUMP_OPTIONS |= {"allow_unicode": True, "width": 1 << 16}


# libyaml when PyYAML was built with it: the pure-Python parser is ~20x slower.
_PARSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_EMPTY = object()  # no mapping key pending / no document
_OTHER_EVENTS = (yaml.StreamStartEvent, yaml.DocumentStartEvent, yaml.DocumentEndEvent)


def _load_yaml(raw: bytes) -> Any:
    """Build plain data from the parser's events; refuse what a record never needs.

    No composer and no constructor run: they would expand aliases ("billion laughs"),
    honour ``!!python/...`` tags if the loader were ever swapped, and recurse with the
    nesting depth (libyaml's composer, in C, crashed the interpreter on 1 MiB of ``[``;
    both parsers slow down quadratically with depth). So: no aliases, no merge keys, no
    duplicate keys, no tags but the standard ones, at most MAX_NESTING levels and
    MAX_EVENTS events.

    A record in storagectl's own style (nearly every one) is read by the much faster
    :func:`load_canonical` instead, which returns the same data or refuses the file.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid(None, f"not UTF-8 text (byte {exc.start})") from None
    try:
        return load_canonical(text)
    except NotCanonical:
        return _load_events(text)


def _load_events(text: str) -> Any:
    """:func:`_load_yaml` for any text: from libyaml's events, strictly."""
    loader = _PARSER(text)
    stack: list[Any] = []  # open collections, innermost last
    keys: list[Any] = []  # for each open mapping, its pending key (or _EMPTY)
    root: Any = _EMPTY

    def add(value: Any, line: int) -> None:
        nonlocal root
        if not stack:
            root = value
        elif isinstance(stack[-1], list):
            stack[-1].append(value)
        elif keys[-1] is not _EMPTY:
            stack[-1][keys[-1]], keys[-1] = value, _EMPTY
        elif isinstance(value, list | dict):
            raise _Invalid(None, f"a mapping key is not a scalar (line {line})")
        elif value in stack[-1]:
            raise _Invalid(None, f"duplicate key {value!r} (line {line})")
        else:
            keys[-1] = value

    try:
        for count, event in enumerate(iter(loader.get_event, None)):
            if count > MAX_EVENTS:
                line = event.start_mark.line + 1
                raise _Invalid(None, f"more than {MAX_EVENTS} YAML nodes (line {line})")
            kind = type(event)
            if kind is yaml.ScalarEvent:  # ~85% of a record's events: checked first
                tag = event.tag
                if tag in (None, "!"):
                    tag = _resolve(loader, event.value, event.implicit)
                if tag == _STR:
                    add(event.value, event.start_mark.line + 1)
                    continue
                line = event.start_mark.line + 1
                if tag in _SCALAR_TAGS:
                    node = yaml.ScalarNode(tag, event.value)
                    add(getattr(loader, _SCALAR_TAGS[tag])(node), line)
                elif tag == f"{_T}merge":
                    raise _Invalid(None, f"YAML merge keys are not allowed (line {line})")
                else:
                    raise _Invalid(None, f"YAML tag {tag!r} is not allowed (line {line})")
                continue
            line = event.start_mark.line + 1
            if kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                stack.pop()
                keys.pop()
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                is_map = kind is yaml.MappingStartEvent
                if event.tag not in (None, "!", f"{_T}{'map' if is_map else 'seq'}"):
                    raise _Invalid(None, f"YAML tag {event.tag!r} is not allowed (line {line})")
                container: Any = {} if is_map else []
                add(container, line)
                stack.append(container)
                keys.append(_EMPTY)
                if len(stack) > MAX_NESTING:
                    raise _Invalid(None, f"nested more than {MAX_NESTING} levels (line {line})")
            elif kind is yaml.StreamEndEvent:
                break
            elif kind is yaml.DocumentStartEvent and root is not _EMPTY:
                raise _Invalid(None, f"more than one YAML document (line {line})")
            elif kind is yaml.AliasEvent:
                raise _Invalid(None, f"YAML aliases are not allowed (line {line})")
            elif kind not in _OTHER_EVENTS:
                raise _Invalid(None, f"unexpected YAML event {kind.__name__} (line {line})")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise _Invalid(None, f"not valid YAML: {what}{where}") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a bad int/float/timestamp
        raise _Invalid(None, f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return None if root is _EMPTY else root


# Field checks: the schema below is built from these.


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _str(value: Any, field: str) -> str:
    """Non-empty text without control characters."""
    if not isinstance(value, str):
        raise _Invalid(field, f"expected a string, got {_kind(value)}")
    if not value or _CONTROL.search(value):
        raise _Invalid(field, f"{value!r} is empty or contains control characters")
    return value


def _opt(check: Check) -> Check:
    return lambda value, field: None if value is None else check(value, field)


def _like(regex: str, what: str) -> Check:
    pattern = re.compile(regex)

    def check(value: Any, field: str) -> str:
        if not pattern.fullmatch(_str(value, field)):
            raise _Invalid(field, f"{value!r} is not {what}")
        return value

    return check


def _path(value: Any, field: str) -> str:
    if not _str(value, field).startswith("/") or os.path.normpath(value) != value:
        raise _Invalid(field, f"{value!r} is not an absolute, normalized path")
    return value


def _one_of(*choices: str) -> Check:
    def check(value: Any, field: str) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _Invalid(field, f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


#: qemu's limit on an image size (a signed 64-bit byte count).
MAX_SIZE = (1 << 63) - 1


def _size(value: Any, field: str) -> int | None:
    if value is not None and (type(value) is not int or value < 0):
        raise _Invalid(field, f"expected a size in bytes (an integer >= 0), got {value!r}")
    if value is not None and value > MAX_SIZE:
        raise _Invalid(field, f"a size of {len(str(value))} digits is more than qemu's 2**63-1")
    return value


def _timestamp(value: Any, field: str) -> str:
    try:
        ok = bool(_TIMESTAMP.match(_str(value, field)) and datetime.fromisoformat(value))
    except ValueError:
        ok = False
    if not ok:
        raise _Invalid(field, f"{value!r} is not a UTC time like '2026-11-23T23:59:01Z'")
    return value


def _list_of(check: Check) -> Check:
    def check_list(value: Any, field: str) -> list[Any]:
        if not isinstance(value, list):
            raise _Invalid(field, f"expected a list, got {_kind(value)}")
        return [check(item, f"{field}[{i}]") for i, item in enumerate(value)]

    return check_list


def _map(spec: dict[str, Check] | None, optional: tuple[str, ...] = ()) -> Check:
    """A mapping with exactly the keys of ``spec`` (less ``optional`` ones), or any keys."""

    def check_map(value: Any, field: str) -> dict[str, Any]:
        def name(key: str) -> str:
            return f"{field}.{key}" if field else key

        if not isinstance(value, dict):
            raise _Invalid(field or None, f"expected a mapping, got {_kind(value)}")
        if not all(isinstance(key, str) for key in value):
            raise _Invalid(field or None, "all keys must be strings")
        if spec is None:
            return value
        for key in spec:
            if key not in value and key not in optional:
                raise _Invalid(name(key), "missing")
        for key in value:
            if key not in spec:
                raise _Invalid(name(key), "unknown field")
        return {key: check(value[key], name(key)) for key, check in spec.items() if key in value}

    return check_map


LVM_NAME = _like(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*", "a valid LVM name")
FILE_LOCATION = _map({"path": _path})
_VOLUME_LOCATION = _map({"path": _opt(_path)})
# the checks the backends build their location schemas from
mapping, like, optional, path, string = _map, _like, _opt, _path, _str
_DISK = _map(
    {
        "name": _like(r"(?!\.\.?$)[^/]+", "a file name"),
        "role": _one_of(*RECORDABLE_ROLES),
        "target": _opt(_str),
        "backend": _one_of(*RECORDABLE_BACKENDS),
        "format": _opt(_str),
        "device": _one_of(*DEVICES),
        "location": _map(None),  # checked against the backend in _disk
        "virtual_size": _size,
        "backing": _opt(_map({"path": _path, "format": _opt(_str)})),
    },
    optional=("backing",),
)
_RECORD = _map(
    {
        "schema_version": lambda v, f: v,  # checked first, in _validate
        "instance": _map(
            {"uuid": _like(naming.UUID_RE.pattern, "a lower-case UUID"), "name": _str, "host": _str}
        ),
        "written": _map({"at": _timestamp, "by": _str}),
        "obtained": _map({"how": _one_of(*OBTAINED_HOW), "evidence": _list_of(_str)}),
        "disks": _list_of(_DISK),
        "retained_sources": _list_of(_map(None)),
    }
)


def _validate(data: Any, *, expect_uuid: str | None) -> Record:
    """Check every field of a loaded record and build the :class:`Record`."""
    if isinstance(data, dict) and "schema_version" in data:  # first: a v2 file says so
        version = data["schema_version"]
        if type(version) is not int or version != SCHEMA_VERSION:
            raise _Invalid(
                "schema_version",
                f"{version!r} is not supported (this storagectl reads version {SCHEMA_VERSION})",
            )
    doc = _RECORD(data, "")
    inst, obtained = doc["instance"], doc["obtained"]
    if expect_uuid is not None and inst["uuid"] != expect_uuid.lower():
        raise _Invalid("instance.uuid", f"{inst['uuid']} is not this instance ({expect_uuid})")
    _unique(obtained["evidence"], "obtained.evidence")
    disks = [_disk(d, f"disks[{i}]", inst["uuid"]) for i, d in enumerate(doc["disks"])]
    _unique([d.name for d in disks], "disks", ".name")
    _unique([d.target for d in disks], "disks", ".target")
    written, evidence = doc["written"], tuple(obtained["evidence"])
    return Record(
        inst["uuid"],
        inst["name"],
        inst["host"],
        written["at"],
        written["by"],
        obtained["how"],
        evidence,
        tuple(disks),
        tuple(doc["retained_sources"]),
    )


def _disk(d: dict[str, Any], f: str, uuid: str) -> DiskLayout:
    """A type-checked disk mapping -> DiskLayout, checking it belongs to this instance."""
    name, role, backend, fmt = d["name"], Role(d["role"]), Backend(d["backend"]), d["format"]
    # A volume (Cinder, ...) may be opened any way and lives anywhere: never ours.
    cls = registry.backend_class(backend.value) if stored(backend) else None
    if cls and fmt not in cls.formats(backend.value):
        expected = " or ".join(cls.formats(backend.value))
        raise _Invalid(f"{f}.format", f"{fmt!r}: a {backend} disk is opened as {expected}")
    if backend is not Backend.VOLUME and role is not naming.role_of(name):
        raise _Invalid(f"{f}.role", f"{role} does not match the Nova disk name {name!r}")
    if (role is Role.VOLUME) != (backend is Backend.VOLUME):
        raise _Invalid(f"{f}.role", f"role {role} does not go with backend {backend}")
    if d.get("backing") and not (cls and cls.has_backing(backend.value)):
        raise _Invalid(f"{f}.backing", f"only qcow2 disks have a backing file, not {backend}")
    where = f"{f}.location"
    if cls:
        loc = cls.disk_fields_from_record(cls.check_record_location(d["location"], where))
    else:
        loc = {"path": _VOLUME_LOCATION(d["location"], where).get("path")}
    disk = DiskLayout(
        name=name,
        role=role,
        target=d["target"],
        backend=backend,
        format=fmt,
        device=d["device"],
        virtual_size=d["virtual_size"],
        backing=Backing(**d["backing"]) if d.get("backing") else None,
        **loc,
    )
    if cls:
        mine, field, want = cls.record_owner_check(disk, uuid)
        if not mine:
            raise _Invalid(f"{where}.{field}", f"not this disk of this instance (expected {want})")
    return disk


def _unique(values: Sequence[Any], field: str, suffix: str = "") -> None:
    first: dict[Any, int] = {}
    for i, value in enumerate(values):
        if value is not None and value in first:
            raise _Invalid(
                f"{field}[{i}]{suffix}", f"{value!r} repeats {field}[{first[value]}]{suffix}"
            )
        first.setdefault(value, i)
