"""A minimal hand-built legacy node for precise inspection tests.

Unlike the sandbox (realistic, many instances), ``mini_node`` lets a test place exactly
the disk it needs - usually an attack crafted with the real qemu-img - and inspect it
through the real CLI and the libvirt test driver.
"""

from __future__ import annotations

import json
import subprocess
import uuid as uuidlib
from pathlib import Path
from xml.sax.saxutils import quoteattr

import pytest
from click.testing import CliRunner

from storagectl.cli import cli


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


class MiniNode:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances = root / "instances"
        self.base = self.instances / "_base"
        self.base.mkdir(parents=True)
        self.conf = root / "nova.conf"
        self.conf.write_text(f"[DEFAULT]\nstate_path = {root}\ninstances_path = {self.instances}\n")
        self.domains: list[str] = []
        self._n = 0

    def flat_host(self) -> MiniNode:
        """nova.conf says ``use_cow_images = false``: Nova's Flat images (raw files,
        format from disk.info), as on a host whose instances are raw files."""
        self.conf.write_text(self.conf.read_text() + "use_cow_images = false\n")
        return self

    def dir(self, uuid: str) -> Path:
        d = self.instances / uuid
        d.mkdir(exist_ok=True)
        return d

    def new_uuid(self) -> str:
        self._n += 1
        return str(uuidlib.UUID(int=0x5EED0000 + self._n))

    def add(self, uuid: str, disks: list[dict], *, kernel: str | None = None) -> str:
        """disks: dicts with type (file|block|network), fmt, src, target, device."""
        parts = []
        for i, d in enumerate(disks):
            dtype = d.get("type", "file")
            target = d.get("target", "vd" + "abcdefgh"[i])
            if dtype == "file":
                source = f"<source file={quoteattr(str(d['src']))}/>" if d.get("src") else ""
            elif dtype == "block":
                source = f"<source dev={quoteattr(d['src'])}/>"
            else:
                source = (
                    f"<source protocol='rbd' name={quoteattr(d['src'])}>"
                    "<host name='127.0.0.1' port='6789'/></source>"
                )
            parts.append(
                f"<disk type='{dtype}' device='{d.get('device', 'disk')}'>"
                f"<driver name='qemu' type='{d['fmt']}'/>{source}"
                f"<target dev='{target}' bus='virtio'/></disk>"
            )
        os_el = "<os><type>hvm</type>"
        if kernel:
            os_el += f"<kernel>{kernel}</kernel>"
        os_el += "</os>"
        self.domains.append(
            f"<domain type='test'><name>instance-{len(self.domains) + 1:08x}</name>"
            f"<uuid>{uuid}</uuid><memory>65536</memory>{os_el}"
            f"<devices>{''.join(parts)}</devices></domain>"
        )
        return uuid

    @property
    def uri(self) -> str:
        node = self.root / "node.xml"
        node.write_text("<node>\n" + "\n".join(self.domains) + "\n</node>\n")
        return f"test://{node}"

    def run(self, *args: str) -> tuple[int, str, str]:
        runner = CliRunner()
        res = runner.invoke(
            cli,
            [
                "-c",
                self.uri,
                "--nova-conf",
                str(self.conf),
                "--log-file",
                str(self.root / "storagectl.log"),
                *args,
            ],
        )
        if res.exception and not isinstance(res.exception, SystemExit):
            raise res.exception
        return res.exit_code, res.stdout, res.stderr

    def inspect(self, *args: str) -> dict:
        code, out, err = self.run("inspect", "-o", "json", *args)
        assert code == 0, err
        return json.loads(out)

    def instance(self, uuid: str, *args: str) -> dict:
        data = self.inspect(*args)
        return next(i for i in data["instances"] if i["uuid"] == uuid)


@pytest.fixture
def mini_node(tmp_path: Path) -> MiniNode:
    return MiniNode(tmp_path)


def codes(instance: dict) -> set[str]:
    return {f["code"] for f in instance["findings"]}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))
