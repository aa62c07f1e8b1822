"""A test-only ``storagectl`` executable for the ansible tier: the real CLI over a fake
libvirt, so a playbook can convert a "compute host" on this machine.

    python tests/ansible/fake_host_storagectl.py -c test:///SBX/node.xml \\
        --nova-conf SBX/etc/nova/nova.conf --lock-path SBX/locks migrate --all --to flat --yes

What is fake and what is real:

* **fake - the hypervisor only.** ``migrate`` refuses libvirt's ``test`` driver (it forgets
  a redefined domain when its connection closes: ``libvirt_port.driver_problem``), and the
  tier must not use the real libvirtd that the whole test run shares (``migrate --all``
  would take every domain on it). So, as ``tests/unit/test_migrate_matrix_fake_libvirt.
  FakeNode`` does, every domain read and definition of a migration goes to a
  :class:`~storagectl.host.libvirt_port.FakeLibvirt` kept in a JSON file beside the node
  file (``SBX/fake-libvirt.json``), through ``Application(libvirt_factory=...)``.
* **real - everything else:** the CLI and its exit statuses, the read-only scan (the
  libvirt test driver over ``SBX/node.xml``), the files, ``qemu-img``, records, journals,
  disk.info and nova.conf.

The two views of the domains are kept in step here, as ``FakeNode.rescan`` does: the first
run builds the fake from the node file (a ``<test:runstate>`` of 1 = running marks the
domain active); before and after every run each domain's ``<devices>`` in the node file is
replaced by the fake's persistent definition, so a scan sees what a migration defined.

A ``-c`` URI that is not a ``test://`` node file that exists is passed through untouched:
the scan reports that host unreachable, as the real tool would.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

from storagectl.cli import cli
from storagectl.cli.app import Application
from storagectl.host.libvirt_port import FakeLibvirt

DEVICES = re.compile(r"<devices>.*?</devices>", re.DOTALL)
DOMAIN = re.compile(r"<domain[\s>].*?</domain>", re.DOTALL)
UUID = re.compile(r"<uuid>\s*([^<\s]+)\s*</uuid>")
RUNSTATE = re.compile(r"\s*<test:runstate>\s*(\d+)\s*</test:runstate>")
TEST_NS = re.compile(r"\s+xmlns:test=(['\"])[^'\"]*\1")


def node_file(uri: str) -> Path | None:
    """The node file of a ``test:///abs/node.xml`` URI, if it exists."""
    parts = urlsplit(uri)
    if parts.scheme != "test" or not parts.path or parts.path == "/default":
        return None
    path = Path(parts.path)
    return path if path.is_file() else None


def state_file(node: Path) -> Path:
    return node.parent / "fake-libvirt.json"


def uris_of(argv: list[str]) -> list[str]:
    """The ``-c/--connect`` URIs of a storagectl command line."""
    uris = []
    for n, arg in enumerate(argv):
        if arg in ("-c", "--connect") and n + 1 < len(argv):
            uris.append(argv[n + 1])
        elif arg.startswith("--connect="):
            uris.append(arg.split("=", 1)[1])
    return uris


def sync(uri: str, node: Path) -> None:
    """Create the fake from the node file (first run), then make the node file's
    ``<devices>`` what the fake has defined."""
    text = node.read_text()
    state = state_file(node)
    if not state.exists():
        domains, active = [], []
        for dom in DOMAIN.findall(text):
            run = RUNSTATE.search(dom)
            if run and run.group(1) == "1":
                active.append(UUID.search(dom).group(1))
            domains.append(TEST_NS.sub("", RUNSTATE.sub("", dom)) + "\n")
        FakeLibvirt(domains, uri=uri, path=state, active=active)
        return
    defined = json.loads(state.read_text())["xml"]

    def replace(match: re.Match) -> str:
        dom = match.group(0)
        uuid = UUID.search(dom).group(1).lower()
        if uuid not in defined:
            return dom
        now = DEVICES.search(defined[uuid]).group(0)
        return DEVICES.sub(lambda _m: now, dom, count=1)

    new = DOMAIN.sub(replace, text)
    if new != text:
        node.write_text(new)


def main(argv: list[str]) -> int:
    nodes = {uri: node for uri in uris_of(argv) if (node := node_file(uri)) is not None}

    def factory(uri: str) -> FakeLibvirt:
        node = nodes.get(uri)
        if node is None:  # never the shared libvirtd from this executable
            raise SystemExit(f"fake_host_storagectl: no fake libvirt for {uri!r}")
        return FakeLibvirt(uri=uri, path=state_file(node))

    for uri, node in nodes.items():
        sync(uri, node)
    try:
        cli.main(args=argv, prog_name="storagectl", obj=Application(libvirt_factory=factory))
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    finally:
        for uri, node in nodes.items():
            sync(uri, node)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        return 1
    return code or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
