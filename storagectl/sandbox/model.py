"""What a sandbox is made of: the spec that asks for one and the manifest that describes it.

The manifest (``DIR/sandbox.json``) is written last, from these classes, so tests and
benchmarks know exactly which instances and disks to expect without re-deriving Nova's
naming rules. ``to_dict``/``from_dict`` give its stable JSON shape::

    {"version": 1, "seed": 0, "uri": "test:///DIR/node.xml", ...,
     "instances": [{"uuid": "...", "name": "instance-00000101", "kind": "qcow2",
                    "disks": [{"name": "disk", "format": "qcow2", "backend": "file",
                               "path": "DIR/instances/<uuid>/disk",
                               "backing_file": "DIR/instances/_base/<sha1>", ...}]}]}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from storagectl import errors

MANIFEST_NAME = "sandbox.json"
MANIFEST_VERSION = 1

#: Instance kinds, one per Nova image backend era the sandbox imitates.
KINDS = ("qcow2", "flat", "lvm", "rbd")


class SandboxError(errors.StorageCtlError):
    """A sandbox could not be built or read."""

    template = "sandbox %(root)s: %(reason)s"


@dataclass
class SandboxSpec:
    """What to build. Everything is derived from ``seed``: same spec, same sandbox."""

    root: Path
    instances: int = 6
    seed: int = 0
    kinds: tuple[str, ...] = ("qcow2", "flat")  # cycled through; lvm/rbd added when asked
    volume_group: str | None = None  # LVM instances when set
    rbd_pool: str | None = None  # RBD instances when set (with ceph_conf)
    ceph_conf: str | None = None
    rbd_user: str | None = None
    define_uri: str | None = None  # also define the domains in this libvirtd
    domain_type: str = "kvm"  # domain type for define_uri (the node file always says test)
    virtual_size: int = 1 << 30  # root disk size (the flavor's root_gb)
    workers: int = 4
    guest_writes: bool = True  # write a marker block into each root, as a booted guest would
    flavors: tuple[str, ...] = ()  # only these flavor names (plan.FLAVORS); () means all

    def effective_kinds(self) -> tuple[str, ...]:
        """``kinds`` plus ``lvm``/``rbd`` when their settings are given."""
        kinds = list(self.kinds)
        if self.volume_group and "lvm" not in kinds:
            kinds.append("lvm")
        if self.rbd_pool and "rbd" not in kinds:
            kinds.append("rbd")
        return tuple(kinds)


@dataclass
class SandboxDisk:
    """One disk of one instance, as Nova laid it out and as the domain XML names it."""

    name: str  # Nova's disk name: disk, disk.local, disk.eph0, disk.swap, disk.config
    target: str  # vda, vdb, ..., hdd
    bus: str  # virtio | ide
    device: str  # disk | cdrom
    format: str  # the XML driver type: qcow2 | raw
    backend: str  # file | lvm | rbd
    virtual_size: int
    path: str | None = None  # file path, or /dev/VG/LV for LVM
    backing_file: str | None = None  # qcow2 overlays: the _base file
    vg: str | None = None
    lv: str | None = None
    pool: str | None = None
    image: str | None = None
    #: Nova, with the sandbox's nova.conf (images_type=default, use_cow_images=True: its
    #: Qcow2 images), would open this disk otherwise than it is stored - a disk of an
    #: older layout of the host (``nova-would-misread``)
    nova_misread: bool = False

    @property
    def location(self) -> str:
        if self.backend == "rbd":
            return f"{self.pool}/{self.image}"
        return self.path or ""


@dataclass
class SandboxInstance:
    uuid: str
    name: str  # libvirt domain name, instance-%08x
    display_name: str
    kind: str
    state: str  # running | shutoff
    flavor: str
    image_id: str
    instance_dir: str
    disks: list[SandboxDisk] = field(default_factory=list)
    # Where the "guest" wrote into its root disk: {"disk", "offset", "length", "pattern"}
    # (pattern is the byte value repeated); None for LVM/RBD, whose data is not written.
    guest_marker: dict[str, Any] | None = None

    def disk(self, name: str) -> SandboxDisk:
        for disk in self.disks:
            if disk.name == name:
                return disk
        raise errors.DiskNotFound(instance=self.uuid, disk=name)


@dataclass
class SandboxBase:
    """A file in ``_base``: an image cache entry or an ephemeral/swap template."""

    name: str
    path: str
    role: str  # image | ephemeral | swap
    virtual_size: int
    image_id: str | None = None
    in_use: bool = True


@dataclass
class Sandbox:
    root: Path
    nova_conf: Path
    instances_path: Path
    node_xml: Path
    uri: str  # test:///DIR/node.xml
    instances: list[SandboxInstance]
    seed: int = 0
    bases: list[SandboxBase] = field(default_factory=list)
    define_uri: str | None = None
    build_seconds: float = 0.0

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    def instance(self, key: str) -> SandboxInstance:
        for inst in self.instances:
            if key in (inst.uuid, inst.name, inst.display_name):
                return inst
        raise errors.InstanceNotFound(instance=key, hosts=self.uri)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "seed": self.seed,
            "root": str(self.root),
            "uri": self.uri,
            "nova_conf": str(self.nova_conf),
            "instances_path": str(self.instances_path),
            "node_xml": str(self.node_xml),
            "define_uri": self.define_uri,
            "build_seconds": round(self.build_seconds, 3),
            "bases": [asdict(b) for b in self.bases],
            "instances": [asdict(i) for i in self.instances],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> Sandbox:
        if data.get("version") != MANIFEST_VERSION:
            raise SandboxError(root=where, reason=f"unknown manifest version {data.get('version')}")
        try:
            instances = []
            for raw in data["instances"]:
                disks = [SandboxDisk(**_known(SandboxDisk, d)) for d in raw.get("disks", [])]
                inst = SandboxInstance(**_known(SandboxInstance, raw))
                inst.disks = disks
                instances.append(inst)
            return cls(
                root=Path(data["root"]),
                nova_conf=Path(data["nova_conf"]),
                instances_path=Path(data["instances_path"]),
                node_xml=Path(data["node_xml"]),
                uri=data["uri"],
                instances=instances,
                seed=int(data.get("seed", 0)),
                bases=[SandboxBase(**_known(SandboxBase, b)) for b in data.get("bases", [])],
                define_uri=data.get("define_uri"),
                build_seconds=float(data.get("build_seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SandboxError(root=where, reason=f"malformed {MANIFEST_NAME}: {exc}") from exc


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)} - {"disks"}
    return {k: v for k, v in data.items() if k in names}
