"""storagectl sandbox: build a throwaway legacy Nova compute node to try storagectl on."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import click

from storagectl import errors
from storagectl.cli.app import Application, output_option
from storagectl.host.process import Runner
from storagectl.sandbox import Sandbox, SandboxSpec, create_sandbox

_EXTRA_KINDS = ("lvm", "rbd")
_SIZE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.IGNORECASE)


def _parse_size(value: str) -> int:
    """``1G``, ``64M``, ``512MiB`` or plain bytes -> bytes (binary units)."""
    match = _SIZE.match(value.strip())
    if not match:
        raise errors.UsageError(reason=f"--root-size {value!r}: expected e.g. 1G, 64M or bytes")
    number, unit = int(match.group(1)), match.group(2).upper()
    return number * 1024 ** "_KMGT".index(unit or "_")


@click.group("sandbox")
def sandbox_group() -> None:
    """Build a sandbox legacy Nova compute node for demos, tests and benchmarks."""


@sandbox_group.command("create")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-n",
    "--instances",
    default=6,
    show_default=True,
    type=click.IntRange(0),
    help="Number of instances.",
)
@click.option(
    "--with",
    "with_",
    default="",
    metavar="lvm,rbd",
    help="Also make LVM and/or RBD instances (comma-separated).",
)
@click.option("--volume-group", metavar="VG", help="VG for LVM instances (--with lvm).")
@click.option("--rbd-pool", metavar="POOL", help="Pool for RBD instances (--with rbd).")
@click.option("--ceph-conf", metavar="FILE", help="ceph.conf for RBD instances.")
@click.option("--rbd-user", metavar="USER", help="cephx user for RBD instances.")
@click.option(
    "--define",
    "define_uri",
    metavar="URI",
    help="Also define the domains (persistent, not started) in this libvirtd.",
)
@click.option(
    "--domain-type",
    type=click.Choice(["kvm", "qemu"]),
    default="kvm",
    show_default=True,
    help="Domain type for --define.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Same seed, same sandbox (uuids, names, flavors, data).",
)
@click.option(
    "--root-size",
    default="1G",
    show_default=True,
    metavar="SIZE",
    help="Virtual size of every root disk (the flavor's root_gb).",
)
@click.option(
    "--flavors",
    default="",
    metavar="NAME,...",
    help="Only these flavors (m1.tiny, m1.small, m1.medium, m1.swap, m1.large), e.g. "
    "m1.tiny,m1.swap for a small volume group.  [default: all]",
)
@click.option(
    "--workers",
    default=4,
    show_default=True,
    type=click.IntRange(1),
    help="Disks made in parallel.",
)
@output_option("table", "json", "yaml")
@click.pass_context
def create_cmd(
    ctx: click.Context,
    directory: Path,
    instances: int,
    with_: str,
    volume_group: str | None,
    rbd_pool: str | None,
    ceph_conf: str | None,
    rbd_user: str | None,
    define_uri: str | None,
    domain_type: str,
    seed: int,
    root_size: str,
    flavors: str,
    workers: int,
    fmt: str,
) -> None:
    """Write a legacy Nova compute node into the new or empty DIRECTORY.

    Instances of every kind Nova's libvirt driver made over the years (qcow2 on _base,
    flat raw, and with --with: LVM LVs, RBD images), their _base cache, disk.info,
    config drives, a nova.conf, and a libvirt test-driver node file listing them all,
    made with the real qemu-img. Prints how to point storagectl at it.
    """
    extra = tuple(k.strip() for k in with_.split(",") if k.strip())
    unknown = [k for k in extra if k not in _EXTRA_KINDS]
    if unknown:
        raise errors.UsageError(reason=f"--with {','.join(unknown)}: expected lvm and/or rbd")
    if "lvm" in extra and not volume_group:
        raise errors.UsageError(reason="--with lvm needs --volume-group VG")
    if "rbd" in extra and not (rbd_pool and ceph_conf):
        raise errors.UsageError(reason="--with rbd needs --rbd-pool POOL and --ceph-conf FILE")
    spec = SandboxSpec(
        root=directory,
        instances=instances,
        seed=seed,
        kinds=("qcow2", "flat", *extra),
        volume_group=volume_group if "lvm" in extra else None,
        rbd_pool=rbd_pool if "rbd" in extra else None,
        ceph_conf=ceph_conf,
        rbd_user=rbd_user,
        define_uri=define_uri,
        domain_type=domain_type,
        virtual_size=_parse_size(root_size),
        workers=workers,
        flavors=tuple(f.strip() for f in flavors.split(",") if f.strip()),
    )
    app = ctx.obj if isinstance(ctx.obj, Application) else Application()
    runner: Runner = app.runner
    # The spinner goes to stderr, and only on a terminal (rich draws none otherwise).
    with app.err.status(f"building {instances} instances in {directory} ..."):
        sandbox = create_sandbox(spec, runner)
    summary = _summary(sandbox)
    if fmt != "table":
        app.print_data(summary, fmt)
        return
    from storagectl.cli.render import emit_table  # rich: only when drawn

    click.echo(f"sandbox {sandbox.root} (seed {sandbox.seed})")
    emit_table(
        app.console,
        ("KIND", "INSTANCES", "RUNNING", "SHUT OFF", "DISKS"),
        [
            (
                (
                    k["kind"],
                    str(k["instances"]),
                    str(k["running"]),
                    str(k["shut_off"]),
                    str(k["disks"]),
                ),
                None,
            )
            for k in summary["kinds"]
        ],
    )
    click.echo(
        f"{summary['bases']} files in _base ({summary['bases_in_use']} in use), "
        f"built in {sandbox.build_seconds:.1f}s; manifest {sandbox.manifest}"
    )
    if sandbox.define_uri:
        click.echo(
            f"defined {len(sandbox.instances)} domains in {sandbox.define_uri} (not started)"
        )
    click.echo("point storagectl at it with:")
    click.echo(f"  {summary['command']}")


def _summary(sandbox: Sandbox) -> dict:
    """What was built, as data: the same for the table and for ``-o json|yaml``."""
    kinds = []
    for kind in sorted(Counter(i.kind for i in sandbox.instances)):
        group = [i for i in sandbox.instances if i.kind == kind]
        running = sum(1 for i in group if i.state == "running")
        kinds.append(
            {
                "kind": kind,
                "instances": len(group),
                "running": running,
                "shut_off": len(group) - running,
                "disks": sum(len(i.disks) for i in group),
            }
        )
    return {
        "root": str(sandbox.root),
        "seed": sandbox.seed,
        "uri": sandbox.define_uri or sandbox.uri,
        "nova_conf": str(sandbox.nova_conf),
        "manifest": str(sandbox.manifest),
        "defined_in": sandbox.define_uri,
        "kinds": kinds,
        "bases": len(sandbox.bases),
        "bases_in_use": sum(1 for b in sandbox.bases if b.in_use),
        "build_seconds": round(sandbox.build_seconds, 3),
        "command": f"storagectl -c {sandbox.define_uri or sandbox.uri} "
        f"--nova-conf {sandbox.nova_conf} inspect",
    }
