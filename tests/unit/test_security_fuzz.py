"""Issue #13 class 2: a fuzz test per reader of hostile input.

Each reader of a file that a guest, an image or another host could have written - the
record, disk.info, the image inspector with the backing-chain walk, the domain XML -
either returns or raises its one documented error; nothing else ever escapes.
"""

from __future__ import annotations

import json
import os
import string
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storagectl import errors
from storagectl.host.domain import DomainXMLError, parse_domain_xml
from storagectl.inspect.verify import read_disk_info
from storagectl.inspector import chain, inspect_bytes
from storagectl.inspector.checks import Check
from storagectl.record.record import parse_record

UUID = "00000000-0000-0000-0000-000000000001"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

# -- the record ---------------------------------------------------------------------

yaml_scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=40),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def record_text(disk_extra: dict[str, str]) -> str:
    """A record whose disk has the extra fields, each given as raw YAML text."""
    extra = "".join(f", {key}: {value}" for key, value in disk_extra.items())
    return (
        "schema_version: 1\n"
        f"instance: {{uuid: {UUID}, name: i, host: h}}\n"
        "written: {at: '2026-11-24T00:12:11Z', by: storagectl 0.1.0}\n"
        "obtained: {how: inferred, evidence: [domain-xml]}\n"
        "disks:\n"
        f"- {{name: disk, role: root, target: vda, backend: flat, format: raw{extra}}}\n"
        "retained_sources: []\n"
    )


yaml_texts = st.one_of(
    yaml_values.map(json.dumps),  # JSON is YAML
    st.text("0123456789", min_size=1, max_size=6000),  # past int's 4300-digit limit
    st.text(max_size=60),
)


def only_record_invalid(text: str | bytes) -> None:
    try:
        parse_record(text, path="/i/storage.yaml", expect_uuid=UUID)
    except errors.RecordInvalid as exc:
        assert "\n" not in str(exc).strip() or "storage.yaml" in str(exc)


@FUZZ
@given(st.binary(max_size=2048))
def test_record_reader_on_arbitrary_bytes(data: bytes) -> None:
    only_record_invalid(data)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["virtual_size", "location", "backing", "device"]), yaml_values)
)
def test_record_reader_on_hostile_fields(extra: dict) -> None:
    only_record_invalid(record_text(extra))


def test_record_reader_on_the_issue_cases() -> None:
    for digits in (5000, 300, 20):  # 9 * 10**19 > 2**63 - 1: no image is that large
        text = record_text({"virtual_size": "9" * digits})
        try:
            parse_record(text, path="/i/storage.yaml", expect_uuid=UUID)
        except errors.RecordInvalid as exc:
            assert "\n" not in str(exc) and "storage.yaml" in str(exc)
        else:
            raise AssertionError(f"a {digits}-digit virtual_size was accepted")
    for text in (
        record_text({"virtual_size": "9" * 5000}),  # over int's str-conversion limit
        record_text({"virtual_size": "9" * 300}),  # parses, but no image is that large
        record_text({"location": "{path: " + "/a" * 100 + "\\0x}"}),
        "[" * 200_000 + "]" * 200_000,
        "a: " + "{b: " * 5000 + "1" + "}" * 5000,
        "virtual_size: 0x" + "f" * 6000,
    ):
        only_record_invalid(text)


# -- disk.info ----------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none(), st.floats()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def disk_info_of(content: bytes) -> tuple:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "disk.info").write_bytes(content)
        return read_disk_info(tmp)


@FUZZ
@given(st.one_of(st.binary(max_size=4096), json_values.map(lambda v: json.dumps(v).encode())))
def test_disk_info_reader_never_raises(content: bytes) -> None:
    info, error = disk_info_of(content)
    assert (info is None) or (error is None)
    if error:
        assert "\n" not in error


def test_disk_info_reader_on_the_issue_cases(tmp_path: Path) -> None:
    for content in (
        b"[" * 200_000 + b"]" * 200_000,
        b'{"a": ' + b"7" * 6000 + b"}",
        b"\xff\xfe" * 100,
        b"{" * 100_000,
    ):
        info, error = disk_info_of(content)
        assert info is None and error and "disk.info" in error
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "disk.info")
    assert read_disk_info(str(fifo_dir)) == (None, f"{fifo_dir}/disk.info is not a regular file")
    link_dir = tmp_path / "link"
    link_dir.mkdir()
    (link_dir / "disk.info").symlink_to("/etc/passwd")
    assert read_disk_info(str(link_dir))[1].endswith("is a symbolic link")
    big = tmp_path / "big"
    big.mkdir()
    (big / "disk.info").write_bytes(b" " * (2 << 20))
    assert "larger than" in read_disk_info(str(big))[1]


# -- the inspector and the chain walk ---------------------------------------------------


def qcow2_naming(name: bytes, fmt: bytes | None = b"raw") -> bytes:
    """A minimal qcow2 v3 header whose backing file is ``name`` (format ``fmt``)."""
    header = bytearray(65536)
    struct.pack_into(">4sIQIIQ", header, 0, b"QFI\xfb", 3, 0, 0, 16, 1 << 20)
    struct.pack_into(">QQQII", header, 72, 0, 0, 0, 4, 104)
    ext = 104
    if fmt is not None:
        struct.pack_into(">II", header, ext, 0xE2792ACA, len(fmt))
        header[ext + 8 : ext + 8 + len(fmt)] = fmt
        ext += 8 + ((len(fmt) + 7) & ~7)
    struct.pack_into(">II", header, ext, 0, 0)
    offset = 1024
    header[offset : offset + len(name)] = name
    struct.pack_into(">QI", header, 8, offset, len(name))
    return bytes(header)


names = st.one_of(
    st.binary(min_size=1, max_size=80),
    st.text(alphabet=string.printable + "\x00\\:", min_size=1, max_size=60).map(str.encode),
    st.sampled_from(
        [b"json:{}", b"nbd://h/x", b"file:/etc/shadow", b"../../etc/shadow", b"/etc/shadow"]
    ),
)


@FUZZ
@given(names, st.sampled_from([b"raw", b"qcow2", None]), st.integers(0, 3))
def test_chain_walk_never_raises_and_never_leaves_the_cache(
    name: bytes, fmt: bytes | None, depth: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp, "_base")
        cache.mkdir()
        Path(tmp, "shadow").write_bytes(b"secret")
        below = cache / "leaf"
        below.write_bytes(qcow2_naming(name, fmt))
        for level in range(depth):
            upper = cache / f"l{level}"
            upper.write_bytes(qcow2_naming(below.name.encode(), b"qcow2"))
            below = upper
        walked = chain.walk(str(below), "qcow2", str(cache))
        for link in walked.links:
            assert link.real.startswith(str(cache) + "/")
        judged = chain.not_a_path(walked.links[-1].report.backing_file or "x")
        if judged is not None or b"\x00" in name:
            assert walked.problems
        for problem in walked.problems:
            assert isinstance(problem.check, Check) and problem.message


@FUZZ
@given(st.binary(max_size=70000), st.sampled_from(["raw", "qcow2", "vmdk", "vhd", "luks", "x"]))
def test_inspector_on_arbitrary_bytes(data: bytes, fmt: str) -> None:
    report = inspect_bytes(data, fmt)
    for failure in report.failures:
        assert isinstance(failure.check, Check)


# -- the domain XML -------------------------------------------------------------------

attr = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@FUZZ
@given(st.text(max_size=2000))
def test_domain_xml_reader_on_arbitrary_text(text: str) -> None:
    try:
        info = parse_domain_xml(text, where="fuzz")
    except DomainXMLError as exc:
        assert "fuzz" in str(exc) and "\n" not in str(exc).split(": ", 1)[0]
        return
    assert info.uuid and info.name


@FUZZ
@given(attr, attr, attr, attr)
def test_domain_xml_reader_on_hostile_disks(dtype: str, source: str, fmt: str, dev: str) -> None:
    from xml.sax.saxutils import quoteattr

    xml = (
        f"<domain type='kvm'><name>n</name><uuid>{UUID}</uuid><devices>"
        f"<disk type={quoteattr(dtype)} device='disk'><driver name='qemu' type={quoteattr(fmt)}/>"
        f"<source file={quoteattr(source)} dev={quoteattr(source)} name={quoteattr(source)}/>"
        f"<backingStore type='file'><format type={quoteattr(fmt)}/>"
        f"<source file={quoteattr(source)}/></backingStore>"
        f"<target dev={quoteattr(dev)}/></disk></devices></domain>"
    )
    try:
        info = parse_domain_xml(xml, where="fuzz")
    except DomainXMLError as exc:
        assert "fuzz" in str(exc)
        return
    assert info.uuid == UUID and len(info.disks) == 1


def test_domain_xml_reader_on_deep_nesting() -> None:
    for xml in ("<domain>" + "<a>" * 100_000 + "</a>" * 100_000 + "</domain>", "<" * 10000):
        with pytest.raises(DomainXMLError, match="deep"):
            parse_domain_xml(xml, where="deep")
