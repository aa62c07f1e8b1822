"""The sandbox plan: every name, size and choice, derived from the seed and nothing else.

Pure functions, no I/O: ``plan_sandbox(spec)`` returns what ``build`` then makes and
``novaxml`` then describes. Nova's naming rules are reproduced here:

- image cache entry: ``_base/sha1(image_id)`` (nova/virt/libvirt/imagecache.py
  ``get_cache_fname``), raw because ``force_raw_images=True``;
- ephemeral template: ``_base/ephemeral_<GB>_<md5(fs)[:7]>`` (driver.py ``_create_image``
  with nova/privsep/fs.py ``get_file_extension_for_os_type``; here fs is ``ext4`` from
  ``default_ephemeral_format``);
- swap template: ``_base/swap_<MB>``;
- LVs ``<uuid>_<disk>`` (``_`` doubled), RBD images ``<uuid>_<disk>``;
- domain names ``instance-%08x`` (``instance_name_template``).
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from storagectl.model.naming import lv_name, rbd_image_name
from storagectl.sandbox.model import KINDS, SandboxDisk, SandboxError, SandboxInstance, SandboxSpec

MiB = 1 << 20
GiB = 1 << 30

BASE_DIR = "_base"
#: What Nova makes of the sandbox's nova.conf (build.nova_conf_text): its Qcow2 images.
#: Disks of every other kind are of an older layout of the host, and Nova would misread
#: them; a local config drive (a raw file with its disk.info entry) is read as stored.
NOVA_IMAGES_TYPE = "qcow2"
EPHEMERAL_FS = "ext4"  # nova.conf default_ephemeral_format
NOVA_VERSION = "21.2.4"  # a Ussuri-era compute node: old enough to be "legacy"
FIRST_INSTANCE_ID = 0x101
CONFIG_DRIVE_TARGET = "hdd"  # blockinfo puts the config drive on the *last* IDE slot


@dataclass(frozen=True)
class Flavor:
    name: str
    vcpus: int
    memory_mb: int
    ephemeral_gb: int
    swap_mb: int


FLAVORS = (
    Flavor("m1.tiny", 1, 512, 0, 0),
    Flavor("m1.small", 1, 2048, 1, 0),
    Flavor("m1.medium", 2, 4096, 1, 512),
    Flavor("m1.swap", 1, 1024, 0, 256),
    Flavor("m1.large", 4, 8192, 2, 512),
)

# (glance name, virtual size): small stand-ins for real cloud images.
_IMAGES = (
    ("cirros-0.5.2-x86_64-disk", 112 * MiB),
    ("ubuntu-20.04-server-cloudimg-amd64", 320 * MiB),
    ("centos-8-stream-GenericCloud", 256 * MiB),
)
# An image no instance uses any more: the image cache manager has not removed it yet.
_ORPHAN_IMAGE = ("fedora-32-cloud-base", 64 * MiB)

_NAME_PREFIXES = ("web", "db", "cache", "worker", "api", "batch")
_PROJECTS = ("admin", "demo", "ops")


@dataclass(frozen=True)
class PlannedImage:
    image_id: str
    name: str
    base_name: str  # sha1(image_id)
    virtual_size: int
    in_use: bool = True


@dataclass(frozen=True)
class Template:
    """An ephemeral or swap template in ``_base`` (made by mkfs/mkswap)."""

    name: str
    role: str  # ephemeral | swap
    virtual_size: int


@dataclass
class PlannedInstance:
    record: SandboxInstance
    index: int
    flavor: Flavor
    image: PlannedImage
    config_drive: bool
    project: tuple[str, str]  # (uuid, name)
    user: tuple[str, str]
    port_uuid: str
    mac: str
    ip: str
    created: int  # epoch seconds
    ephemeral: Template | None = None
    swap: Template | None = None


@dataclass
class Plan:
    spec: SandboxSpec
    root: Path
    instances_path: Path
    base_path: Path
    images: list[PlannedImage]
    templates: list[Template]
    instances: list[PlannedInstance] = field(default_factory=list)
    host_uuid: str = ""
    rbd_secret_uuid: str | None = None

    def base_file(self, name: str) -> Path:
        return self.base_path / name


def allowed_flavors(spec: SandboxSpec) -> tuple[Flavor, ...]:
    """``FLAVORS`` narrowed to ``spec.flavors`` (e.g. no ephemerals for a small VG)."""
    if not spec.flavors:
        return FLAVORS
    return tuple(f for f in FLAVORS if f.name in spec.flavors)


def cache_name(image_id: str) -> str:
    """``imagecache.get_cache_fname``: the sha1 of the image id."""
    return hashlib.sha1(image_id.encode("utf-8")).hexdigest()


def ephemeral_name(size_gb: int, fs: str = EPHEMERAL_FS) -> str:
    """``ephemeral_%s_%s % (size_gb, md5(fs)[:7])``.

    >>> ephemeral_name(1)
    'ephemeral_1_40d1d2c'
    """
    return f"ephemeral_{size_gb}_{hashlib.md5(fs.encode('utf-8')).hexdigest()[:7]}"


def swap_name(size_mb: int) -> str:
    return f"swap_{size_mb}"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _rng(seed: int, what: str) -> random.Random:
    # String seeds hash with sha512: stable across runs and Python versions.
    return random.Random(f"storagectl-sandbox:{seed}:{what}")


def plan_sandbox(spec: SandboxSpec) -> Plan:
    """Decide everything about the sandbox described by ``spec``."""
    root = Path(spec.root).absolute()
    kinds = spec.effective_kinds()
    _validate(spec, root, kinds)
    instances_path = root / "instances"
    base_path = instances_path / BASE_DIR

    rng = _rng(spec.seed, "host")
    images = []
    for name, size in (*_IMAGES, _ORPHAN_IMAGE):
        image_id = _uuid(rng)
        images.append(
            PlannedImage(
                image_id=image_id,
                name=name,
                base_name=cache_name(image_id),
                virtual_size=min(size, spec.virtual_size),
                in_use=name != _ORPHAN_IMAGE[0],
            )
        )
    projects = [(_uuid(rng).replace("-", ""), name) for name in _PROJECTS]
    users = [(_uuid(rng).replace("-", ""), f"{name}-user") for name in _PROJECTS]
    plan = Plan(
        spec=spec,
        root=root,
        instances_path=instances_path,
        base_path=base_path,
        images=images,
        templates=[],
        host_uuid=_uuid(rng),
        rbd_secret_uuid=_uuid(rng) if spec.rbd_pool else None,
    )

    templates: dict[str, Template] = {}
    for index in range(spec.instances):
        inst = _plan_instance(plan, index, kinds[index % len(kinds)], projects, users)
        for tmpl in (inst.ephemeral, inst.swap):
            if tmpl is not None:
                templates.setdefault(tmpl.name, tmpl)
        plan.instances.append(inst)
    plan.templates = sorted(templates.values(), key=lambda t: t.name)
    return plan


def _validate(spec: SandboxSpec, root: Path, kinds: tuple[str, ...]) -> None:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SandboxError(root=root, reason=f"unknown kind(s) {', '.join(unknown)}")
    if not kinds:
        raise SandboxError(root=root, reason="no instance kinds asked for")
    if "lvm" in kinds and not spec.volume_group:
        raise SandboxError(root=root, reason="lvm instances need a volume group")
    if "rbd" in kinds and not (spec.rbd_pool and spec.ceph_conf):
        raise SandboxError(root=root, reason="rbd instances need a pool and a ceph.conf")
    unknown_flavors = set(spec.flavors) - {f.name for f in FLAVORS}
    if unknown_flavors:
        raise SandboxError(
            root=root,
            reason=f"unknown flavor(s) {', '.join(sorted(unknown_flavors))}; known: "
            + ", ".join(f.name for f in FLAVORS),
        )
    if spec.instances < 0:
        raise SandboxError(root=root, reason="the number of instances cannot be negative")
    if spec.virtual_size < 16 * MiB or spec.virtual_size % MiB:
        raise SandboxError(root=root, reason="virtual_size must be a whole number of MiB >= 16")


def _plan_instance(
    plan: Plan,
    index: int,
    kind: str,
    projects: list[tuple[str, str]],
    users: list[tuple[str, str]],
) -> PlannedInstance:
    spec = plan.spec
    rng = _rng(spec.seed, f"instance:{index}")
    inst_uuid = _uuid(rng)
    # Structure cycles with the index, so a handful of instances covers every flavor and
    # both power states for every kind (the cycles of 5 share no factor with the usual
    # 1-4 kinds); identity and the finer choices come from the seeded RNG.
    flavors = allowed_flavors(spec)
    flavor = flavors[(index * 7 + spec.seed) % len(flavors)]
    image = plan.images[rng.randrange(len(_IMAGES))]
    config_drive = rng.random() < 0.5
    eph_disk = "disk.eph0" if rng.random() < 0.3 else "disk.local"
    state = "shutoff" if index % 5 in (2, 3) else "running"
    owner = rng.randrange(len(projects))
    mac = "fa:16:3e:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))
    port_uuid = _uuid(rng)
    created = 1577836800 + index * 3607 + rng.randrange(3600)
    inst_dir = plan.instances_path / inst_uuid
    record = SandboxInstance(
        uuid=inst_uuid,
        name=f"instance-{FIRST_INSTANCE_ID + index:08x}",
        display_name=f"{_NAME_PREFIXES[index % len(_NAME_PREFIXES)]}-{index:04d}",
        kind=kind,
        state=state,
        flavor=flavor.name,
        image_id=image.image_id,
        instance_dir=str(inst_dir),
    )
    planned = PlannedInstance(
        record=record,
        index=index,
        flavor=flavor,
        image=image,
        config_drive=config_drive,
        project=projects[owner],
        user=users[owner],
        port_uuid=port_uuid,
        mac=mac,
        ip=f"10.{index // 62500 % 256}.{index // 250 % 250}.{index % 250 + 2}",
        created=created,
    )
    if flavor.ephemeral_gb:
        planned.ephemeral = Template(
            ephemeral_name(flavor.ephemeral_gb), "ephemeral", flavor.ephemeral_gb * GiB
        )
    if flavor.swap_mb:
        planned.swap = Template(swap_name(flavor.swap_mb), "swap", flavor.swap_mb * MiB)

    letters = iter("abcdefghijklmnopqrstuvwxyz")
    disks = [_disk(plan, planned, "disk", next(letters), spec.virtual_size, image.base_name)]
    if planned.ephemeral:
        disks.append(
            _disk(
                plan,
                planned,
                eph_disk,
                next(letters),
                planned.ephemeral.virtual_size,
                planned.ephemeral.name,
            )
        )
    if planned.swap:
        disks.append(
            _disk(
                plan,
                planned,
                "disk.swap",
                next(letters),
                planned.swap.virtual_size,
                planned.swap.name,
            )
        )
    if config_drive:
        disks.append(_config_disk(plan, planned))
    record.disks = disks
    return planned


def _disk(
    plan: Plan, inst: PlannedInstance, name: str, letter: str, size: int, base: str
) -> SandboxDisk:
    spec = plan.spec
    kind = inst.record.kind
    common = dict(
        name=name,
        target=f"vd{letter}",
        bus="virtio",
        device="disk",
        virtual_size=size,
        nova_misread=kind != NOVA_IMAGES_TYPE,
    )
    inst_dir = Path(inst.record.instance_dir)
    if kind == "qcow2":
        return SandboxDisk(
            **common,
            format="qcow2",
            backend="file",
            path=str(inst_dir / name),
            backing_file=str(plan.base_file(base)),
        )
    if kind == "flat":
        return SandboxDisk(**common, format="raw", backend="file", path=str(inst_dir / name))
    if kind == "lvm":
        lv = lv_name(inst.record.uuid, name)
        return SandboxDisk(
            **common,
            format="raw",
            backend="lvm",
            path=f"/dev/{spec.volume_group}/{lv}",
            vg=spec.volume_group,
            lv=lv,
        )
    return SandboxDisk(
        **common,
        format="raw",
        backend="rbd",
        pool=spec.rbd_pool,
        image=rbd_image_name(inst.record.uuid, name),
    )


def _config_disk(plan: Plan, inst: PlannedInstance) -> SandboxDisk:
    common = dict(
        name="disk.config",
        target=CONFIG_DRIVE_TARGET,
        bus="ide",
        device="cdrom",
        format="raw",
        virtual_size=0,  # known once the ISO is built
    )
    if inst.record.kind == "rbd":
        # With images_type=rbd Nova imports the config drive into the pool and deletes
        # the local file. This host's Nova (not rbd) looks for the local file.
        return SandboxDisk(
            **common,
            nova_misread=True,
            backend="rbd",
            pool=plan.spec.rbd_pool,
            image=rbd_image_name(inst.record.uuid, "disk.config"),
        )
    return SandboxDisk(
        **common, backend="file", path=str(Path(inst.record.instance_dir) / "disk.config")
    )
