"""A sandbox legacy Nova compute node: real files, real qemu-img, a libvirt test driver.

``create_sandbox(SandboxSpec(root=DIR))`` writes, under DIR only (plus LVs/RBD images
when asked)::

    DIR/etc/nova/nova.conf         images_type=default, use_cow_images, force_raw_images
    DIR/instances/_base/<sha1>     raw image cache entries (one no longer used)
    DIR/instances/_base/ephemeral_<GB>_<md5(ext4)[:7]>, swap_<MB>   mkfs'd templates
    DIR/instances/<uuid>/disk, disk.local|disk.eph0, disk.swap, disk.config,
                         disk.info, console.log
    DIR/node.xml                   libvirt test-driver node: test:///DIR/node.xml
    DIR/sandbox.json               the manifest (what tests should expect)

Instances cycle through ``kinds``: ``qcow2`` (overlays on ``_base``), ``flat`` (raw
copies, the ``use_cow_images=False`` era), ``lvm`` (LVs ``<uuid>_disk``) and ``rbd``
(images ``<uuid>_disk``). Everything is derived from ``seed``; disks are sparse and
made in parallel (``workers`` threads), so 1,000 instances take seconds, not minutes.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import TypeVar

from storagectl import errors
from storagectl.host.process import Runner
from storagectl.sandbox.build import (
    Backends,
    define_domains,
    disk_shape,
    make_base,
    make_instance,
    make_prototype,
    make_template,
    nova_conf_text,
    write_qcow2_markers,
)
from storagectl.sandbox.model import (
    MANIFEST_NAME,
    Sandbox,
    SandboxBase,
    SandboxDisk,
    SandboxError,
    SandboxInstance,
    SandboxSpec,
)
from storagectl.sandbox.novaxml import (
    VIR_DOMAIN_RUNNING,
    VIR_DOMAIN_SHUTOFF,
    RbdAccess,
    domain_xml,
    mon_hosts_from_conf,
    node_xml,
    to_text,
)
from storagectl.sandbox.plan import GiB, Plan, plan_sandbox

__all__ = [
    "Sandbox",
    "SandboxBase",
    "SandboxDisk",
    "SandboxError",
    "SandboxInstance",
    "SandboxSpec",
    "create_sandbox",
    "load_sandbox",
]

LOG = logging.getLogger(__name__)
T = TypeVar("T")
_MARKER_BATCH = 100  # qcow2 guest writes per qemu-io process


def create_sandbox(spec: SandboxSpec, runner: Runner | None = None) -> Sandbox:
    """Build the sandbox described by ``spec`` and return its manifest.

    Refuses (``UsageError``) a root that exists and is not empty. On failure the partly
    built tree is left in place for inspection.
    """
    started = time.monotonic()
    runner = runner or Runner()
    plan = plan_sandbox(spec)
    root = plan.root
    _claim(root)
    rbd_access = _rbd_access(plan) if any(i.record.kind == "rbd" for i in plan.instances) else None

    nova_conf = root / "etc" / "nova" / "nova.conf"
    nova_conf.parent.mkdir(parents=True)
    nova_conf.write_text(nova_conf_text(plan))
    plan.base_path.mkdir(parents=True)
    records = _build_disks(plan, runner, _backends(plan, runner))

    node_path = root / "node.xml"
    node_path.write_text(node_xml(_domains(plan, "test", rbd_access), str(plan.instances_path)))
    if spec.define_uri:
        domains = _domains(plan, spec.domain_type, rbd_access)
        define_domains(spec.define_uri, [to_text(d) for d in domains])

    sandbox = Sandbox(
        root=root,
        nova_conf=nova_conf,
        instances_path=plan.instances_path,
        node_xml=node_path,
        uri=f"test://{node_path}",
        instances=records,
        seed=spec.seed,
        bases=_bases(plan),
        define_uri=spec.define_uri,
        build_seconds=time.monotonic() - started,
    )
    sandbox.manifest.write_text(json.dumps(sandbox.to_dict(), indent=1) + "\n")
    LOG.info("sandbox %s built in %.1fs", root, sandbox.build_seconds)
    return sandbox


def load_sandbox(root: Path) -> Sandbox:
    """Read ``root/sandbox.json`` back into a :class:`Sandbox`."""
    path = Path(root) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SandboxError(
            root=root, reason=f"no {MANIFEST_NAME}: not a sandbox (storagectl sandbox create)"
        ) from None
    except (OSError, ValueError) as exc:
        raise SandboxError(root=root, reason=f"cannot read {path}: {exc}") from exc
    return Sandbox.from_dict(data, Path(root))


def _build_disks(plan: Plan, runner: Runner, backends: Backends) -> list[SandboxInstance]:
    """Bases and templates, then one prototype per disk shape, then the instances."""
    # Scratch space for the prototypes: inside root (nothing outside it is touched),
    # removed once every instance has its copies.
    scratch = plan.root / ".sandbox-build"
    scratch.mkdir()
    shapes = sorted(
        {
            disk_shape(plan, inst, disk)
            for inst in plan.instances
            for disk in inst.record.disks
            if disk.backend == "file" and disk.name != "disk.config"
        }
    )
    prototypes = {shape: scratch / f"prototype-{n}" for n, shape in enumerate(shapes)}
    workers = max(1, plan.spec.workers)
    LOG.info(
        "sandbox %s: %d bases, %d templates, %d disk shapes, %d instances",
        plan.root, len(plan.images), len(plan.templates), len(shapes), len(plan.instances),
    )  # fmt: skip
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            _run_all(
                pool,
                [partial(make_base, i, plan.base_file(i.base_name), runner) for i in plan.images]
                + [partial(make_template, t, plan.base_file(t.name), runner)
                   for t in plan.templates],
            )  # fmt: skip
            _run_all(pool, [partial(make_prototype, s, p, runner) for s, p in prototypes.items()])
            records = _run_all(
                pool,
                [partial(make_instance, plan, i, runner, backends, prototypes)
                 for i in plan.instances],
            )  # fmt: skip
            qcow2 = [r for r in records if r.guest_marker and r.disk("disk").format == "qcow2"]
            batch = max(1, min(_MARKER_BATCH, -(-len(qcow2) // workers)))
            _run_all(
                pool,
                [partial(write_qcow2_markers, qcow2[n : n + batch], runner)
                 for n in range(0, len(qcow2), batch)],
            )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return records


def _domains(plan: Plan, domain_type: str, rbd: RbdAccess | None) -> list[ET.Element]:
    """Every instance's domain: for the node file (``test``) or a real libvirtd."""
    test = domain_type == "test"
    return [
        domain_xml(
            inst,
            domain_type=domain_type,
            host_uuid=plan.host_uuid,
            root_gb=max(1, math.ceil(plan.spec.virtual_size / GiB)),
            rbd=rbd,
            runstate=(VIR_DOMAIN_SHUTOFF if inst.record.state == "shutoff" else VIR_DOMAIN_RUNNING)
            if test
            else None,
            bridged=test,
        )  # fmt: skip
        for inst in plan.instances
    ]


def _claim(root: Path) -> None:
    if root.exists():
        if not root.is_dir():
            raise errors.UsageError(reason=f"{root} exists and is not a directory")
        if any(root.iterdir()):
            raise errors.UsageError(
                reason=f"{root} is not empty: a sandbox is only built in a new or empty "
                "directory (nothing was changed)"
            )
    root.mkdir(parents=True, exist_ok=True)


def _backends(plan: Plan, runner: Runner) -> Backends:
    kinds = {inst.record.kind for inst in plan.instances}
    backends = Backends()
    spec = plan.spec
    # Imported here: hosts without LVM/Ceph never need these modules.
    if "lvm" in kinds:
        from storagectl.backends.lvm import LVM

        backends.lvm = LVM(runner)
    if "rbd" in kinds:
        from storagectl.backends.rbd import RBD

        backends.rbd = RBD(runner, pool=spec.rbd_pool, ceph_conf=spec.ceph_conf, user=spec.rbd_user)
    return backends


def _rbd_access(plan: Plan) -> RbdAccess:
    conf = plan.spec.ceph_conf or ""
    try:
        hosts = mon_hosts_from_conf(Path(conf).read_text())
    except OSError as exc:
        raise SandboxError(root=plan.root, reason=f"cannot read ceph conf {conf}: {exc}") from exc
    if not hosts:
        raise SandboxError(root=plan.root, reason=f"no 'mon host' in {conf}")
    return RbdAccess(hosts=hosts, user=plan.spec.rbd_user, secret_uuid=plan.rbd_secret_uuid)


def _bases(plan: Plan) -> list[SandboxBase]:
    bases = [
        SandboxBase(
            name=img.base_name,
            path=str(plan.base_file(img.base_name)),
            role="image",
            virtual_size=img.virtual_size,
            image_id=img.image_id,
            in_use=img.in_use,
        )
        for img in plan.images
    ]
    bases += [
        SandboxBase(
            name=t.name, path=str(plan.base_file(t.name)), role=t.role, virtual_size=t.virtual_size
        )
        for t in plan.templates
    ]
    return bases


def _run_all(pool: ThreadPoolExecutor, jobs: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``jobs`` on ``pool``; on the first failure cancel the rest and raise it."""
    futures: list[Future[T]] = [pool.submit(job) for job in jobs]
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    failed = [f for f in futures if f in done and f.exception() is not None]
    if failed:
        for fut in pending:
            fut.cancel()
        wait(pending)
        raise failed[0].exception()  # type: ignore[misc]
    return [f.result() for f in futures]
