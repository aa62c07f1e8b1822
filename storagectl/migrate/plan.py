"""The migration plan: which disks move where, computed from the record only.

A plan never comes from inference: the instance must have a valid ``storage.yaml``
(``storagectl persist``), and each disk's source is the recorded location. Targets follow
Nova's naming, so that Nova itself finds the disks afterwards:

- flat / qcow2: ``<instances_path>/<uuid>/<name>`` (a qcow2 target is standalone);
- lvm: ``/dev/<vg>/<uuid>_<name>`` (``_`` doubled), VG from ``--volume-group`` or
  ``[libvirt] images_volume_group``;
- rbd: ``<pool>/<uuid>_<name>``, pool from ``--pool`` or ``[libvirt] images_rbd_pool``,
  ceph conf and user from nova.conf.

A file disk keeps its Nova name, so a file->file move copies into a temporary
``<name>.migrating`` and, at the switch, moves the source aside to
``<name>.retained-<backend>`` (see :mod:`storagectl.migrate.switch`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from storagectl import errors
from storagectl.backends import registry
from storagectl.backends.base import nova_settings
from storagectl.host.config import NovaConfig
from storagectl.model import attrs
from storagectl.model.layout import DiskLayout, Role
from storagectl.model.location import Location
from storagectl.record.record import Record

#: Backends this slice can write to and read from.
TARGETS = registry.all_targets()
SOURCES = registry.all_names()
DEFAULT_ROLES = (Role.ROOT, Role.EPHEMERAL, Role.SWAP)
MOVABLE_ROLES = (Role.ROOT, Role.EPHEMERAL, Role.SWAP, Role.CONFIG)


class MigrationRefused(errors.StorageCtlError):
    """The migration cannot start; nothing was changed."""

    template = "cannot migrate %(instance)s: %(reason)s"


@dataclass
class DiskMove:
    """One disk: from ``source`` to ``dest``; file targets go through ``temp_path``."""

    name: str
    role: str
    target_dev: str | None
    virtual_size: int
    source: Location
    dest: Location
    temp_path: str | None = None  # file targets: copied here, renamed at the switch
    retained_path: str | None = None  # file sources: moved here at the switch
    needed: int | None = None  # bytes the copy will take on the target (preflight)
    # retained copies of earlier migrations holding a name this move needs, moved aside at
    # the create step (preflight fills it; see roundtrip.py): {"entry", "at", "to"}
    displaced: list[dict] = field(default_factory=list)

    @property
    def copy_dest(self) -> Location:
        """Where the copy writes: the temporary file for file targets."""
        if self.temp_path:
            return replace(self.dest, path=self.temp_path)  # type: ignore[type-var]
        return self.dest

    @property
    def retained(self) -> Location:
        """Where the source lives once the switch is done."""
        if self.retained_path:
            return replace(self.source, path=self.retained_path)  # type: ignore[type-var]
        return self.source

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["source"], data["dest"] = self.source.to_record(), self.dest.to_record()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiskMove:
        data = dict(data)
        data["source"] = Location.from_record(data["source"])
        data["dest"] = Location.from_record(data["dest"])
        return cls(**data)


@dataclass
class Options:
    """What the operator asked for (``storagectl migrate`` options)."""

    to: str
    roles: tuple[str, ...] = tuple(r.value for r in DEFAULT_ROLES)
    volume_group: str | None = None
    pool: str | None = None
    ceph_conf: str | None = None
    rbd_user: str | None = None
    secret_uuid: str | None = None  # libvirt secret for new rbd disks; wins over all else
    delete_source: bool = False
    # --to ... --delete-retained: a retained copy in the way is deleted (else kept, renamed)
    delete_retained: bool = False
    parallel: int = 1
    bwlimit: int | None = None  # MiB/s, per disk
    sparse_lvs: bool = False  # nova.conf sparse_logical_volumes
    #: refuse a running instance instead of moving it live (--offline)
    offline: bool = False
    #: a live move (libvirt block copy of the running guest); set by the engine
    live: bool = False
    #: live: suspend the guest for a full qemu-img compare before the pivot (--verify paused)
    verify_paused: bool = False
    #: live: guest writes wait for the target (write-blocking, --sync-writes)
    sync_writes: bool = False
    #: live: seconds the mirror may take to become ready (--converge-timeout)
    converge_timeout: int = 3600

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["roles"] = list(self.roles)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Options:
        data = dict(data)
        data["roles"] = tuple(data.get("roles") or ())
        return cls(**data)


@dataclass
class Plan:
    uuid: str
    name: str
    uri: str
    instance_dir: str
    options: Options
    moves: list[DiskMove] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "disk: why"
    # nova.conf [libvirt] rbd_secret_uuid when planned: the last resort for new rbd disks'
    # <auth> (after --secret-uuid and an rbd disk of the domain), journaled so that a
    # resume switches with the secret the migration started with.
    nova_secret_uuid: str | None = None
    #: how Nova reads the result (``novaguard.NovaOutcome.to_dict``), once checked
    nova: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **attrs(self, "uuid", "name", "uri", "instance_dir"),
            "options": self.options.to_dict(),
            "moves": [m.to_dict() for m in self.moves],
            "skipped": list(self.skipped),
            "nova_secret_uuid": self.nova_secret_uuid,
            "nova": self.nova,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            uuid=data["uuid"],
            name=data["name"],
            uri=data["uri"],
            instance_dir=data["instance_dir"],
            options=Options.from_dict(data["options"]),
            moves=[DiskMove.from_dict(m) for m in data["moves"]],
            skipped=list(data.get("skipped") or ()),
            nova_secret_uuid=data.get("nova_secret_uuid"),
            nova=data.get("nova"),
        )


def make_plan(record: Record, options: Options, nova: NovaConfig, *, uri: str) -> Plan:
    """The moves for ``record`` under ``options``; :class:`MigrationRefused` if none.

    Pure: runs nothing. Sizes needed on the target are filled in by preflight.
    """
    to = options.to
    if to not in TARGETS:
        raise errors.UsageError(reason=f"--to must be one of {', '.join(TARGETS)}")
    roles = {Role(r) for r in options.roles}
    bad = roles - set(MOVABLE_ROLES)
    if bad:
        raise errors.UsageError(reason=f"--disks: cannot move {', '.join(sorted(bad))} disks")
    inst_dir = nova.instance_dir(record.uuid)
    plan = Plan(
        record.uuid, record.name, uri, inst_dir, options, nova_secret_uuid=nova.rbd_secret_uuid
    )
    for disk in record.disks:
        why = _skip_reason(disk, to, roles)
        if why:
            plan.skipped.append(f"{disk.name}: {why}")
            continue
        plan.moves.append(_move(record.uuid, disk, to, options, nova, inst_dir))
    if not plan.moves:
        reasons = "; ".join(plan.skipped) or "it has no disks"
        raise MigrationRefused(instance=record.uuid, reason=f"no disk to move to {to}: {reasons}")
    return plan


def _skip_reason(disk: DiskLayout, to: str, roles: set[Role]) -> str | None:
    if disk.role not in roles:
        return f"{disk.role} disks not selected (--disks)"
    if disk.backend not in SOURCES:
        return f"a {disk.backend} disk is never moved"
    if disk.backend == to:
        return f"already {to}"
    if disk.virtual_size is None:
        return "no recorded virtual size"
    return None


def _move(
    uuid: str, disk: DiskLayout, to: str, options: Options, nova: NovaConfig, inst_dir: str
) -> DiskMove:
    where = nova_settings(
        nova,
        inst_dir,
        volume_group=options.volume_group,
        pool=options.pool,
        ceph_conf=options.ceph_conf,
        rbd_user=options.rbd_user,
    )
    target = registry.backend_class(to)
    dest = target.target(to, uuid, disk.name, where)
    source = Location.of_disk(disk)
    temp, kept = target.staging(dest, source)
    return DiskMove(
        name=disk.name,
        role=disk.role.value,
        target_dev=disk.target,
        virtual_size=int(disk.virtual_size or 0),
        source=source,
        dest=dest,
        temp_path=temp.path if temp else None,  # type: ignore[attr-defined]
        retained_path=kept.path if kept else None,  # type: ignore[attr-defined]
    )


def describe(plan: Plan) -> list[str]:
    """Human lines: what will happen, disk by disk (``--dry-run`` and the confirmation)."""
    from storagectl.migrate import roundtrip  # it reads plans

    o = plan.options
    lines = [f"instance {plan.name} ({plan.uuid}) on {plan.uri}: to {o.to}"]
    for m in plan.moves:
        need = f", needs {m.needed} bytes" if m.needed is not None else ""
        lines.append(
            f"  {m.name} ({m.role}, {m.target_dev or '-'}): {m.source.backend} "
            f"{m.source.describe()} -> {m.dest.backend} {m.dest.describe()} "
            f"[virtual {m.virtual_size} bytes{need}]"
        )
        if m.temp_path:
            lines.append(f"      copy into {m.temp_path}, renamed at the switch")
        keep = m.retained.describe()
        lines.append(
            f"      source {'deleted after the switch' if o.delete_source else 'kept as ' + keep}"
        )
        lines += roundtrip.describe_lines(m, o.delete_retained)
    for s in plan.skipped:
        lines.append(f"  skipped {s}")
    if plan.nova and not plan.nova["misread"]:
        lines.append(f"  Nova reads the result as stored with {plan.nova['config']}")
    if o.live:
        check = (
            "; --verify paused: the guest is suspended for a full qemu-img compare, then "
            "pivoted and resumed"
            if o.verify_paused
            else ""
        )
        lines.append(
            "  live (the guest runs): plan, preflight, create target, mirror (libvirt block "
            f"copy{', guest writes wait for the target' if o.sync_writes else ''}), ready "
            f"(at most {o.converge_timeout} s), pivot{check}, switch (domain XML + record), "
            "cleanup"
        )
        for m in plan.moves:
            if m.temp_path:
                lines.append(
                    f"  {m.name}: the running guest keeps using {m.temp_path} (the same file "
                    f"as {m.dest.describe()}) until it is next shut off"
                )
        return lines
    lines.append(
        "  steps: plan, preflight, create target, copy (qemu-img convert), verify "
        "(qemu-img compare), switch (domain XML + record), cleanup"
    )
    return lines
