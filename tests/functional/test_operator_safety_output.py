"""Issue #12, item 15: on a terminal of any width, no uuid and no path is ever wrapped in
the layout and findings tables (copy-paste must work); free text is folded, and columns
are left out by width (said on stderr) instead."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from storagectl.cli.render import LAYOUT_COLUMNS, LAYOUT_DROP, findings_table, layouts_table
from storagectl.host.config import load_nova_config
from storagectl.host.process import Runner
from storagectl.inspect.inspection import inspect_hosts
from storagectl.model.layout import Finding, Severity
from tests.functional.test_persist import legacy_instance

WIDTHS = (60, 80, 100, 120, 160, 240, 400)


def terminal(width: int) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, force_terminal=True, color_system=None), out


def assert_whole(text: str, strings: set[str]) -> None:
    lines = text.splitlines()
    for s in strings:
        assert any(s in line for line in lines), f"{s!r} wrapped or cut in:\n{text}"


@pytest.mark.parametrize("width", WIDTHS)
def test_layout_table_never_wraps_a_uuid_or_a_path(mini_node, width, capsys):
    for _ in range(2):
        legacy_instance(mini_node)
    nova = load_nova_config([mini_node.conf])
    result = inspect_hosts([mini_node.uri], nova, Runner())
    paths = {d.location for i in result.instances for d in i.disks}
    assert all(len(p) > 60 for p in paths)  # the pytest tmp paths are long
    wanted = paths | {i.uuid for i in result.instances}
    console, out = terminal(width)
    layouts_table(console, result.instances)
    assert_whole(out.getvalue(), wanted)
    err = capsys.readouterr().err
    header = out.getvalue().splitlines()[0].split()
    if width >= 400:  # wide enough for everything
        assert header == list(LAYOUT_COLUMNS) and err == ""
    else:  # some columns left out, in LAYOUT_DROP's order, and said so
        (said,) = re.findall(r"^\(columns (.*) left out to fit the terminal", err, re.M)
        dropped = said.split(", ")
        assert dropped == list(LAYOUT_DROP[: len(dropped)])
        assert header == [c for c in LAYOUT_COLUMNS if c not in dropped]


@pytest.mark.parametrize("width", WIDTHS)
def test_findings_table_folds_the_message_not_the_uuid(width):
    uuid = "5eed0001-0000-0000-0000-000000000001"
    message = (
        f"disk /var/lib/nova/instances/{uuid}/disk is used as raw but begins with a qcow2 "
        "header naming backing file '/etc/shadow'; a host that probes it would expose "
        "that file to the guest"
    )
    findings = [
        Finding(Severity.CRITICAL, "raw-disk-has-image-header", uuid, "disk", message),
        Finding(
            Severity.WARNING,
            "unknown-layout",
            "00000000-0000-0000-0000-00000000beef",
            "disk.eph0",
            "short",
        ),
    ]
    console, out = terminal(width)
    findings_table(console, findings)
    text = out.getvalue()
    assert_whole(text, {uuid, "00000000-0000-0000-0000-00000000beef", "raw-disk-has-image-header"})
    # the message, folded over several lines of its column, is all there
    lines = text.splitlines()
    column = lines[0].index("MESSAGE")
    first = next(n for n, line in enumerate(lines) if line.startswith("critical"))
    last = next(n for n, line in enumerate(lines) if line.startswith("warning"))
    folded = "".join(line[column:] for line in lines[first:last])
    assert "".join(folded.split()) == "".join(message.split())
    assert last - first > 1 or width >= 400  # folded (not cut) unless there is room
    if width >= 160:  # room for the message's longest word: the path in it stays whole
        assert_whole(text, {f"/var/lib/nova/instances/{uuid}/disk"})
