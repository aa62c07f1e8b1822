"""storagectl migrate: move instances' disks between flat, qcow2, LVM and RBD."""

from __future__ import annotations

import os
import sys
import threading

import click
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from storagectl import errors
from storagectl.cli.app import Application
from storagectl.cli.render import emit_table
from storagectl.migrate.engine import Engine, Settings
from storagectl.migrate.journal import check_fault
from storagectl.migrate.plan import Options, describe

FAULT_ENV = "STORAGECTL_FAULT"


class RichProgress:
    """One bar per disk plus an overall bar (percent of all disks' bytes)."""

    def __init__(self, progress: Progress) -> None:
        self.p = progress
        self.tasks: dict[str, TaskID] = {}
        self.sizes: dict[str, int] = {}
        self.overall = progress.add_task("all disks", total=100.0)
        self.done: dict[str, float] = {}
        self.lock = threading.Lock()

    def start(self, disk: str, total: int) -> None:
        with self.lock:
            self.tasks[disk] = self.p.add_task(disk, total=100.0)
            self.sizes[disk] = max(total, 1)

    def update(self, disk: str, percent: float) -> None:
        with self.lock:
            self.p.update(self.tasks[disk], completed=percent)
            self.done[disk] = percent
            total = sum(self.sizes.values())
            overall = sum(self.done.get(d, 0) * s for d, s in self.sizes.items()) / total
            self.p.update(self.overall, completed=overall)

    def finish(self, disk: str, ok: bool) -> None:
        if ok:
            self.update(disk, 100.0)


class PlainProgress:
    """Not a terminal: a line per disk every 10%."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def start(self, disk: str, total: int) -> None:
        self.last[disk] = -1
        click.echo(f"copy {disk}: started ({total} bytes)", err=True)

    def update(self, disk: str, percent: float) -> None:
        step = int(percent // 10) * 10
        if step > self.last.get(disk, -1):
            self.last[disk] = step
            click.echo(f"copy {disk}: {step}%", err=True)

    def finish(self, disk: str, ok: bool) -> None:
        click.echo(f"copy {disk}: {'done' if ok else 'FAILED'}", err=True)


@click.command("migrate")
@click.argument("instances", nargs=-1, metavar="INSTANCE...")
@click.option(
    "--to", "to", type=click.Choice(["flat", "qcow2", "lvm", "rbd"]), help="Target backend."
)
@click.option(
    "--disks",
    default="root,ephemeral,swap",
    show_default=True,
    help="Roles of the disks to move (root, ephemeral, swap, config).",
)
@click.option("--volume-group", metavar="VG", help="[default: nova.conf images_volume_group]")
@click.option("--pool", metavar="POOL", help="[default: nova.conf images_rbd_pool]")
@click.option(
    "--secret-uuid",
    metavar="UUID",
    help="libvirt secret of the Ceph user for an RBD target. Without it: the <auth> of "
    "an rbd disk of the domain, else nova.conf [libvirt] rbd_secret_uuid.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (and preflight it); change nothing.")
@click.option(
    "--delete-source",
    is_flag=True,
    help="Delete the sources after the switch (default: keep them as retained).",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Disks copied at once.",
)
@click.option(
    "--bwlimit",
    type=click.IntRange(1),
    metavar="MiB/s",
    help="Copy rate limit per disk (qemu-img convert -r).",
)
@click.option(
    "--ceph-timeout",
    type=click.IntRange(1),
    default=60,
    show_default=True,
    help="Seconds a Ceph operation may hang before the copy fails.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--resume", "mode", flag_value="resume", help="Finish an interrupted migration.")
@click.option(
    "--rollback",
    "mode",
    flag_value="rollback",
    help="Undo an interrupted (or switched, not cleaned-up) migration.",
)
@click.option("--status", "mode", flag_value="status", help="Show migrations in progress.")
@click.option(
    "--delete-retained",
    "mode",
    flag_value="delete-retained",
    help="Delete the sources earlier migrations kept.",
)
@click.pass_obj
def migrate_cmd(
    app: Application,
    instances: tuple[str, ...],
    to: str | None,
    disks: str,
    volume_group: str | None,
    pool: str | None,
    secret_uuid: str | None,
    dry_run: bool,
    delete_source: bool,
    parallel: int,
    bwlimit: int | None,
    ceph_timeout: int,
    yes: bool,
    mode: str | None,
) -> None:
    """Move the disks of shut-off, persisted INSTANCEs to another backend.

    Steps, each journaled in <instance dir>/storage.migration.json: plan, preflight,
    create target, copy (qemu-img convert), verify (qemu-img compare), switch (domain
    XML, record, disk.info), cleanup. After a crash: --resume or --rollback. Exit status:
    0, or 1 if any instance was refused or failed.
    """
    if len(app.uris) != 1:
        raise errors.UsageError(reason="migrate works on one host: give one --connect URI")
    fault = check_fault(os.environ.get(FAULT_ENV))
    settings = Settings(
        uri=app.uris[0],
        nova=app.nova,
        runner=app.runner,
        lock_path=app.lock_path,
        fault=fault,
        ceph_timeout=ceph_timeout,
        say=app.info,
    )
    engine = Engine(settings)
    if mode == "status":
        if len(instances) > 1:
            raise errors.UsageError(reason="--status takes at most one INSTANCE")
        rows = engine.status(instances[0] if instances else None)
        if not rows:
            click.echo("no migration in progress")
            return
        emit_table(
            app.console,
            ("INSTANCE", "NAME", "TO", "STEP", "DISKS", "ERROR"),
            [
                (
                    (
                        r["uuid"],
                        r["name"],
                        r["to"],
                        f"{r['step']} ({r['phase']})",
                        ",".join(r["disks"]),
                        r["error"] or "-",
                    ),
                    None,
                )
                for r in rows
            ],
        )
        return
    if mode:
        if len(instances) != 1:
            raise errors.UsageError(reason=f"--{mode} takes exactly one INSTANCE")
        if mode == "resume":
            with _progress(app) as progress:
                settings.progress = progress
                engine.resume(instances[0])
            click.echo(f"{instances[0]}: migration finished")
        elif mode == "rollback":
            engine.rollback(instances[0])
            click.echo(f"{instances[0]}: migration rolled back")
        else:
            for item in engine.delete_retained(instances[0]) or ["(nothing retained)"]:
                click.echo(f"deleted {item}")
        return
    if not instances or not to:
        raise errors.UsageError(
            reason="name the INSTANCEs and give --to (or use --resume, "
            "--rollback, --status, --delete-retained)"
        )
    options = Options(
        to=to,
        roles=tuple(r.strip() for r in disks.split(",") if r.strip()),
        volume_group=volume_group,
        pool=pool,
        secret_uuid=secret_uuid,
        delete_source=delete_source,
        parallel=parallel,
        bwlimit=bwlimit,
        sparse_lvs=app.nova.sparse_logical_volumes,
    )
    if not dry_run and not yes and not sys.stdin.isatty():
        raise errors.UsageError(reason="stdin is not a terminal: confirm with --yes")
    plans, status = [], 0
    for instance in instances:
        try:
            plans.append(engine.prepare(instance, options))
        except errors.StorageCtlError as exc:
            click.secho(f"--> {type(exc).__name__}: {exc}", fg="red", err=True)
            status = exc.exit_code
    for plan in plans:
        click.echo("\n".join(describe(plan)))
    if dry_run or not plans:
        raise click.exceptions.Exit(status)
    if not yes and not click.confirm("Migrate?", default=False, err=True):
        raise click.exceptions.Exit(1)
    for plan in plans:
        try:
            with _progress(app) as progress:
                settings.progress = progress
                engine.run(plan)
            click.echo(f"{plan.name} ({plan.uuid}): migrated to {to}")
        except errors.StorageCtlError as exc:
            click.secho(f"--> {type(exc).__name__}: {exc}", fg="red", err=True)
            status = exc.exit_code or 1
    raise click.exceptions.Exit(status)


class _progress:  # noqa: N801 - used as a context manager
    def __init__(self, app: Application) -> None:
        self.app = app
        self.rich: Progress | None = None

    def __enter__(self) -> RichProgress | PlainProgress:
        if not self.app.err.is_terminal:
            return PlainProgress()
        self.rich = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TimeRemainingColumn(),
            console=self.app.err,
        )
        self.rich.start()
        return RichProgress(self.rich)

    def __exit__(self, *exc: object) -> None:
        if self.rich is not None:
            self.rich.stop()
