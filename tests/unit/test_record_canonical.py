"""The fast reader of storagectl's own record style against the strict event reader.

The invariant: for any text, ``load_canonical`` either raises NotCanonical or returns
exactly what the event reader returns (same values, same types: ``1`` is not ``True``).
And it must actually take the records storagectl writes, or it is no faster.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storagectl.record import record as rec
from storagectl.record import schema as record_schema
from storagectl.record.canonical import MAX_CHARS, NotCanonical, load_canonical
from tests.unit.test_record import NOW, U, a_record, layouts_and_records, qcow2_disk


def events(text: str) -> Any:
    """The strict event reader alone; its refusal as a value, to compare."""
    try:
        return record_schema._load_events(text)
    except record_schema._Invalid as exc:
        return ("refused", str(exc))


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def fast(text: str) -> Any:
    try:
        return load_canonical(text)
    except NotCanonical:
        return NotCanonical


def check(text: str) -> Any:
    """The invariant for one text; returns the fast reader's answer."""
    got = fast(text)
    if got is not NotCanonical:
        want = events(text)
        assert same(got, want), f"{text!r}: fast {got!r} != events {want!r}"
    return got


# --- records storagectl writes: taken, and read the same ---------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts_and_records())
def test_written_records_read_the_same_by_both_readers(made):
    _, record = made
    text = record.to_yaml()
    got = check(text)
    if re.fullmatch(r"[\w.()-]+(?: [\w.()-]+)*", record.name, re.ASCII):
        assert got is not NotCanonical, text  # names like Nova's: the fast reader takes it
    assert rec.parse_record(text, path="p", expect_uuid=U) == record


def test_a_typical_record_is_taken_by_the_fast_reader():
    record = a_record()
    text = record.to_yaml()
    assert same(load_canonical(text), events(text))
    assert rec.parse_record(text, path="p", expect_uuid=U) == record


def test_a_record_with_retained_sources_and_a_backing_file():
    kept = ({"disk": "disk", "backend": "flat", "path": f"/srv/x/{U}/disk.retained", "at": NOW},)
    record = replace(a_record(qcow2_disk()), retained_sources=kept)
    assert record.disks[0].backing is not None
    text = record.to_yaml()
    assert check(text) is not NotCanonical
    assert rec.parse_record(text, path="p", expect_uuid=U) == record


# --- hand-picked texts: taken with the right value, or left to the event reader -------

TAKEN = [
    ("a: 1\n", {"a": 1}),
    ("a: '1'\n", {"a": "1"}),
    ("a: null\n", {"a": None}),
    ("a: ~\n", {"a": None}),
    ("a:\n", {"a": None}),
    ("a: yes\n", {"a": True}),
    ("a: Off\n", {"a": False}),
    ("a: 1_000\n", {"a": 1000}),
    ("a: 0x10\n", {"a": 16}),
    ("a: 010\n", {"a": 8}),
    ("a: 1.5\n", {"a": 1.5}),
    ("a: .inf\n", {"a": float("inf")}),
    ("a: -1\n", {"a": -1}),
    ("a: storagectl 0.1.0\n", {"a": "storagectl 0.1.0"}),
    ("a: 'it''s, #1: {x}'\n", {"a": "it's, #1: {x}"}),
    ("a: ''\n", {"a": ""}),
    ("a: []\nb: {}\n", {"a": [], "b": {}}),
    ("a: [x, 'y, z', 3]\n", {"a": ["x", "y, z", 3]}),
    ("a: {p: /x/y, q: 'a: b', r: null}\n", {"a": {"p": "/x/y", "q": "a: b", "r": None}}),
    ("# c\n#\nb: 2\n", {"b": 2}),
    ("a:\n- x: 1\n  y: 2\n- x: 3\nb: 4\n", {"a": [{"x": 1, "y": 2}, {"x": 3}], "b": 4}),
    ("a:\n  - x: 1\n    y:\n  - x:\n", {"a": [{"x": 1, "y": None}, {"x": None}]}),
    ("a:\n  b:\n    c: 1\n  d: 2\n", {"a": {"b": {"c": 1}, "d": 2}}),
    ("a:\n- b:\n  - c: 1\n  d: 2\n", {"a": [{"b": [{"c": 1}], "d": 2}]}),
]


@pytest.mark.parametrize(("text", "value"), TAKEN)
def test_taken_with_the_value_pyyaml_gives(text, value):
    got = check(text)
    assert same(got, value)


LEFT = [
    "",  # no document: None, not a mapping
    "a: 1",  # no final newline
    "a:\t1\n",
    "a: 1\r\n",
    "\ufeffa: 1\n",
    "a: caf\u00e9\n",
    "a: 1\n\nb: 2\n",  # a blank line
    "a: 1 # c\n",
    "a: 1\n# c\n",  # a comment after the first rows
    "---\na: 1\n",
    "a: 1\n...\n",
    "%YAML 1.1\n---\na: 1\n",
    "a: &x 1\nb: *x\n",
    "a: !!str 1\n",
    "a: !!python/object:os.system x\n",
    "<<: {b: 1}\n",
    "a: 1\na: 2\n",  # a duplicate key: refused by the event reader
    "a: {b: 1, b: 2}\n",
    "null: 1\n",
    "yes: 1\n",
    "a: 2026-01-01\n",  # a timestamp
    "a: =\n",
    "a: b: c\n",
    "a: [x, ]\n",
    "a: [x,y]\n",
    "a: {b: [c]}\n",
    "a: {b: 1} x\n",
    "a: [b: 1]\n",
    "a: {b}\n",
    'a: "x"\n',
    "a:  b\n",
    "a: b \n",
    "a: 'b\n",
    "a: 'b'c'\n",
    "a: |\n  x\n",
    "a: >\n  x\n",
    "a: b\n  c\n",  # a continued plain scalar
    "- a: 1\n",  # a sequence at the top
    " a: 1\n",
    "a:\n    b: 1\n  c: 2\n",  # bad indentation
    "a:\n- x\n",  # a block sequence of scalars
    "a:\n- - x: 1\n",
    "A: 1\n",
    "a b: 1\n",
    "? a\n: 1\n",
    "a: @x\n",
    "a: `x\n",
    "a: -\n",
    "a: - x\n",
    "a: %x\n",
    "a: x#y\n",
    "a:" + " " * 40 + "\n",
    "a:\n" + "".join(" " * (i + 1) * 2 + f"k{i}:\n" for i in range(40)),  # deep nesting
    "a: x\n" * 2 + "b: " + "x" * MAX_CHARS + "\n",  # too long for the fast reader
]


@pytest.mark.parametrize("text", LEFT)
def test_left_to_the_event_reader(text):
    assert fast(text) is NotCanonical


# --- mutated records: whatever the fast reader takes, it reads as the event reader ----

_ALPHABET = " :-'#{}[],\n\t\"&*!|>~?%@`=.0123456789abcxyzAZ_/\u00e9"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_records_never_read_differently(data):
    text = data.draw(st.sampled_from(_SEEDS))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 3))
        insert = data.draw(st.text(_ALPHABET, max_size=4))
        text = text[:pos] + insert + text[pos + cut :]
    check(text)


_SEEDS = [
    a_record().to_yaml(),
    "a: 1\nb: [x, 'y, z']\nc: {p: /x, q: null}\nd:\n- e: 1\n  f:\n    g: yes\n",
    "x:\n  y:\n  - z: 1\n    w: '2'\n",
]
