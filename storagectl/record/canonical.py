"""A fast reader for the one YAML shape storagectl itself writes; anything else is refused.

A record written by storagectl is a small, regular document::

    # storagectl storage record, schema in docs/record.md. Written by storagectl.
    schema_version: 1
    instance: {uuid: 0001..., name: instance-000004b4, host: cmp1}
    written: {at: '2026-11-24T05:52:47Z', by: storagectl 0.1.0}
    disks:
    - name: disk
      location: {path: /var/lib/nova/instances/0001.../disk}
      virtual_size: 1073741824
    retained_sources: []

Reading it through libyaml's events costs ~300 us (one Python event object per node);
an audit reads one per instance. :func:`load_canonical` reads exactly this subset line
by line, in about half that time, and raises :class:`NotCanonical` on anything outside
it - a hand edit in another style, a tab, a blank line, a double-quoted or non-ASCII
scalar, a multi-line value, a directive, an anchor, a tag, a duplicate key, a comment
after the first lines - so the caller falls back to the strict event reader, which alone decides
what an unusual file means (or why it is refused).

The subset is a strict subset of YAML 1.1 as PyYAML reads it, and for every input it
accepts it returns exactly what the event reader returns (tests/unit/
test_record_canonical.py checks both on generated records and on mutated ones):

- block mappings (``key: value``, keys ``[a-z_][a-z0-9_]*``), block sequences of
  mappings (``- key: value``, indentless under their key, as PyYAML writes them);
- flow mappings and flow sequences of scalars on one line (``{a: x, b: y}``, ``[a, b]``);
- scalars: single-quoted on one line, or plain from a conservative ASCII set (no ``:``,
  ``#``, ``,``, brackets or quotes), typed by PyYAML's own implicit resolver and
  constructors (``1073741824`` is an int, ``null`` is None), so both readers agree on
  every value; a plain scalar resolving to anything but str/int/float/bool/null (a
  timestamp, YAML 1.1's ``=``) is left to the event reader.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# Every character the subset allows: printable ASCII and newlines. Non-ASCII, tabs,
# carriage returns, control characters and a byte-order mark all go to the event reader.
_TEXT = re.compile(r"[\n\x20-\x7e]*")
#: A whole line: indent, "- " (a sequence item), then key and value ("": "key:" alone),
#: or a flow collection alone (an item of a block sequence: ``- {path: /x, at: ...}``).
_ROWS = re.compile(
    r"^( *)(- )?(?:([a-z_][a-z0-9_]*):(?: ([^ \n][^\n]*))?|([\[{][^\n]*))$", re.MULTILINE
)
_KEY = re.compile(r"[a-z_][a-z0-9_]*")
# A plain scalar: no indicator first, then words of printable ASCII joined by single
# spaces, without the flow indicators, quotes, ":" or "#".
_PLAIN = re.compile(
    r"(?:[A-Za-z0-9_./~+()$^;<=\\]|-(?=[^ ]))[A-Za-z0-9_./~+()$^;<=>\\!&*|%@`?-]*"
    r"(?: [A-Za-z0-9_./~+()$^;<=>\\!&*|%@`?-]+)*"
)
_QUOTED = re.compile(r"'((?:[^']|'')*)'")
#: One item of a flow collection, up to its separator: a single-quoted scalar or a
#: plain one (checked against _PLAIN afterwards); then ", " or the end.
_FLOW_ITEM = re.compile(r"(?:([a-z_][a-z0-9_]*): )?('(?:[^']|'')*'|[^,'\[\]{}]+)(?:, |$)")

# Typing scalars: shared with the event reader in record_schema, so both type a scalar
# with the same PyYAML resolver and constructors.
_T = "tag:yaml.org,2002:"
_STR = f"{_T}str"
_SCALAR_TAGS = {f"{_T}{t}": f"construct_yaml_{t}" for t in ("int", "float", "bool", "null")}
_SCALAR_TAGS[f"{_T}timestamp"] = "construct_yaml_timestamp"  # refused later, by type
_TIMESTAMP = f"{_T}timestamp"
# Implicit tag resolution (PyYAML runs a list of regexes per plain scalar) is a pure
# function of (value, implicit); records repeat the same keys and values thousands of
# times in an audit. Bounded: cleared when full.
_RESOLVED: dict[tuple[str, tuple[bool, bool]], str] = {}
_RESOLVED_MAX = 4096


def _resolve(loader: Any, value: str, implicit: tuple[bool, bool]) -> str:
    key = (value, implicit)
    tag = _RESOLVED.get(key)
    if tag is None:
        tag = loader.resolve(yaml.ScalarNode, value, implicit)
        if len(_RESOLVED) >= _RESOLVED_MAX:
            _RESOLVED.clear()
        _RESOLVED[key] = tag
    return tag


#: Larger texts go to the event reader (and its MAX_EVENTS bound); ~250 disks fit.
MAX_CHARS = 64 * 1024
#: Deeper indentation goes to the event reader too: bounds the recursion below.
MAX_INDENT = 32
_MISS = object()
_CACHE_MAX = 4096


class NotCanonical(Exception):
    """Not in the subset: read the file with the event reader instead."""


# Scalar text (plain or quoted, as written) -> its value, and the keys known to be plain
# strings: records repeat the same keys and most values thousands of times in an audit.
_values: dict[str, Any] = {}
_keys: set[str] = set()
_loader: list[Any] = []  # one pure-Python SafeLoader: PyYAML's resolver and constructors


def _scalar(text: str) -> Any:
    """The value of one scalar as PyYAML would construct it (not cached yet)."""
    if text[0] == "'":
        match = _QUOTED.fullmatch(text)
        if match is None:
            raise NotCanonical
        value: Any = match.group(1).replace("''", "'")
    else:
        if _PLAIN.fullmatch(text) is None:
            raise NotCanonical
        if not _loader:
            _loader.append(yaml.SafeLoader(""))
        loader = _loader[0]
        tag = _resolve(loader, text, (True, False))
        if tag == _STR:
            value = text
        elif tag in _SCALAR_TAGS and tag != _TIMESTAMP:
            value = getattr(loader, _SCALAR_TAGS[tag])(yaml.ScalarNode(tag, text))
        else:  # a timestamp, YAML 1.1's "=" value key...: the event reader decides
            raise NotCanonical
    if len(_values) >= _CACHE_MAX:
        _values.clear()
    _values[text] = value
    return value


def _key(key: str, out: dict[str, Any]) -> None:
    """Refuse a duplicate key, or one that is not a plain string ("null:", "yes:")."""
    if key in out:
        raise NotCanonical
    if key not in _keys:
        if _KEY.fullmatch(key) is None or _scalar(key) != key:
            raise NotCanonical
        if len(_keys) >= _CACHE_MAX:
            _keys.clear()
        _keys.add(key)


def _value(text: str) -> Any:
    """A block mapping's value written on its key's line: a scalar or a flow collection."""
    first = text[0]
    if first == "{" or first == "[":
        if text[-1] != ("}" if first == "{" else "]"):
            raise NotCanonical
        return _flow(text[1:-1], first == "{")
    value = _values.get(text, _MISS)
    return _scalar(text) if value is _MISS else value


def _flow(inner: str, is_map: bool) -> Any:
    out: Any = {} if is_map else []
    if not inner:
        return out
    if "'" in inner:  # a quoted scalar may hold ", ": the slower tokenizer
        items = _flow_items(inner)
    else:
        items = [
            (*part.partition(": ")[::2],) if is_map else (None, part) for part in inner.split(", ")
        ]
    for key, text in items:
        if is_map:
            if not key:
                raise NotCanonical
            _key(key, out)
        elif key is not None:
            raise NotCanonical
        if not text:
            raise NotCanonical
        value = _values.get(text, _MISS)
        if value is _MISS:
            value = _scalar(text)
        if is_map:
            out[key] = value
        else:
            out.append(value)
    return out


def _flow_items(inner: str) -> list[tuple[str | None, str]]:
    items, pos, end = [], 0, len(inner)
    while pos < end:
        match = _FLOW_ITEM.match(inner, pos)
        if match is None or match.end() == pos:
            raise NotCanonical
        items.append((match.group(1), match.group(2)))
        pos = match.end()
    if inner.endswith(", "):  # "[a, ]": left to the event reader
        raise NotCanonical
    return items


#: indent, after "- ", key (None: a flow collection alone), value (None: "key:" alone).
Row = tuple[int, bool, "str | None", "str | None"]


def _mapping(rows: list[Row], pos: int, indent: int, out: dict[str, Any]) -> int:
    end = len(rows)
    while pos < end:
        ind, dash, key, value = rows[pos]
        if ind != indent or dash or key is None:
            break
        pos = _entry(rows, pos, indent, out, key, value)
    return pos


def _sequence(rows: list[Row], pos: int, indent: int) -> tuple[int, list[Any]]:
    out, end = [], len(rows)
    while pos < end:
        ind, dash, key, value = rows[pos]
        if ind != indent or not dash:
            break
        if key is None:  # "- {...}" / "- [...]"
            out.append(_value(value or ""))
            pos += 1
            continue
        item: dict[str, Any] = {}
        pos = _entry(rows, pos, indent + 2, item, key, value)
        pos = _mapping(rows, pos, indent + 2, item)
        out.append(item)
    return pos, out


def _entry(
    rows: list[Row], pos: int, indent: int, out: dict[str, Any], key: str, value: str | None
) -> int:
    """One ``key: value`` row at ``indent`` (its value maybe on the rows under it)."""
    _key(key, out)
    pos += 1
    if value is not None:
        out[key] = _value(value)
        return pos
    if pos < len(rows):
        ind, dash, _, _ = rows[pos]
        if dash and ind >= indent:  # a block sequence, indentless or indented
            pos, out[key] = _sequence(rows, pos, ind)
            return pos
        if ind > indent:
            nested: dict[str, Any] = {}
            pos = _mapping(rows, pos, ind, nested)
            out[key] = nested
            return pos
    out[key] = None  # "key:" and nothing under it: YAML's empty (null) value
    return pos


def _comments(text: str) -> int:
    """Where the leading full-line comments end."""
    pos = 0
    while text.startswith("#", pos):
        pos = text.index("\n", pos) + 1
    return pos


def load_canonical(text: str) -> dict[str, Any]:
    """The mapping a record in storagectl's own style holds; :class:`NotCanonical` if the
    text is not in that style (which says nothing about whether it is valid YAML)."""
    if len(text) > MAX_CHARS or not text.endswith("\n") or _TEXT.fullmatch(text) is None:
        raise NotCanonical
    body = text[_comments(text) :]
    found = _ROWS.findall(body)
    # findall skips a line it cannot match: then the matched lines do not add up.
    size = sum(len(s) + len(d) + len(k) + len(v) + len(f) + 1 for s, d, k, v, f in found)
    size += sum(1 + (v != "") for _, _, k, v, _ in found if k)  # ":" and ": "
    if size != len(body):
        raise NotCanonical
    rows: list[Row] = [
        (len(s), d != "", k, v or None) if k else (len(s), d != "", None, f)
        for s, d, k, v, f in found
    ]
    if any(row[0] > MAX_INDENT for row in rows):
        raise NotCanonical
    if not rows:
        raise NotCanonical
    out: dict[str, Any] = {}
    if _mapping(rows, 0, 0, out) != len(rows):
        raise NotCanonical
    return out
