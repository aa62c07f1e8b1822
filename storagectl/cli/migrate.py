"""storagectl migrate: move instances' disks between flat, qcow2, LVM and RBD."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import click
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from storagectl import errors
from storagectl.cli.app import DEFAULT_LOCK_PATH, Application, DiskRoles, output_option
from storagectl.cli.migrate_host import (
    convert_host,
    host_journal_data,
    host_status_lines,
    resume_host,
)
from storagectl.cli.render import emit_table, print_error
from storagectl.host.config import NovaConfig, load_nova_config, parse_assumption
from storagectl.migrate.engine import Engine, Settings
from storagectl.migrate.host import still_misread
from storagectl.migrate.journal import check_fault
from storagectl.migrate.plan import MOVABLE_ROLES, Options, Plan, describe
from storagectl.model import attrs

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


#: The modes of ``migrate``: exactly one per command line (none given = ``--to``).
MODES = ("to", "resume", "rollback", "status", "delete_retained")
#: Options each mode uses; any other given on the command line is refused, never ignored.
_RUN_ONLY = (
    "disks",
    "volume_group",
    "pool",
    "secret_uuid",
    "delete_source",
    "parallel",
    "bwlimit",
    "assume",
    "nova_conf_after",
    "from_",
    "state",
    "keep_going",
    "offline",
    "verify",
    "sync_writes",
    "converge_timeout",
)
ACCEPTS = {
    "to": {*_RUN_ONLY, "dry_run", "yes", "ceph_timeout", "fmt", "all_"},
    "resume": {"dry_run", "yes", "ceph_timeout", "all_"},
    "rollback": {"dry_run", "yes", "ceph_timeout"},
    "delete_retained": {"dry_run", "yes", "ceph_timeout"},
    "status": {"fmt"},
}
_CHECKED = (*_RUN_ONLY, "dry_run", "yes", "ceph_timeout", "fmt", "all_")


def _flag(name: str) -> str:
    return "--output" if name == "fmt" else "--" + name.rstrip("_").replace("_", "-")


def choose_mode(ctx: click.Context, given: dict[str, object]) -> str:
    """The one mode of this command line; conflicting modes and options the mode would
    ignore are a usage error (exit 2), so a typo never turns a resume into an undo."""
    modes = [m for m in MODES if given.get(m)]
    if len(modes) > 1:
        raise errors.UsageError(
            reason=f"{' and '.join(_flag(m) for m in modes)} cannot be combined: give one of "
            + ", ".join(_flag(m) for m in MODES)
        )
    mode = modes[0] if modes else "to"
    for name in _CHECKED:
        source = ctx.get_parameter_source(name)
        if source is None or source is click.core.ParameterSource.DEFAULT:
            continue
        if name not in ACCEPTS[mode]:
            takers = [_flag(m) for m in MODES if name in ACCEPTS[m]]
            raise errors.UsageError(
                reason=f"{_flag(name)} does not apply to {_flag(mode)} "
                f"(it is an option of {' and '.join(takers)})"
            )
    return mode


@dataclass(frozen=True)
class Args:
    """migrate's options (every one but INSTANCE...), as click parsed them."""

    to: str | None
    disks: str
    volume_group: str | None
    pool: str | None
    secret_uuid: str | None
    dry_run: bool
    delete_source: bool
    parallel: int
    bwlimit: int | None
    ceph_timeout: int
    yes: bool
    resume: bool
    rollback: bool
    status: bool
    delete_retained: bool
    fmt: str
    assume: tuple[str, ...] = ()
    nova_conf_after: tuple[str, ...] = ()
    all_: bool = False
    from_: str | None = None
    state: str = "any"
    keep_going: bool = False
    offline: bool = False
    verify: str = "mirror"
    sync_writes: bool = False
    converge_timeout: int = 3600

    def given(self) -> dict[str, object]:
        """The modes the command line asks for (:func:`choose_mode`)."""
        return {
            **attrs(self, "to", "resume", "rollback", "status"),
            # With --to, --delete-retained is that migration's option
            # (Options.delete_retained).
            "delete_retained": self.delete_retained and not self.to,
        }


@click.command("migrate")
@click.argument("instances", nargs=-1, metavar="INSTANCE...")
@click.option(
    "--to", "to", type=click.Choice(["flat", "qcow2", "lvm", "rbd"]), help="Target backend."
)
@click.option(
    "--disks",
    type=DiskRoles(MOVABLE_ROLES),
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
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what --to, --resume, --rollback or --delete-retained would do "
    "(preflighted); change nothing.",
)
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
    help="Disks copied at once; with --all: instances moved at once.",
)
@click.option(
    "--bwlimit",
    type=click.IntRange(1),
    metavar="MiB/s",
    help="Copy rate limit per disk (qemu-img convert -r); with --all: for the whole "
    "host, shared by the moves that run at once.",
)
@click.option(
    "--ceph-timeout",
    type=click.IntRange(1),
    default=60,
    show_default=True,
    help="Seconds a Ceph operation may hang before the copy fails.",
)
@click.option(
    "--yes",
    is_flag=True,
    help="Do not ask for confirmation (required when stdin is not a terminal).",
)
@click.option(
    "--assume",
    multiple=True,
    metavar="'[SECTION] OPTION=VALUE'",
    help="The nova.conf this host will have when the moves are done, as settings over "
    "its nova.conf (repeatable), e.g. --assume '[libvirt] images_type=rbd'. Without it a "
    "move Nova would misread under the current nova.conf is refused.",
)
@click.option(
    "--all",
    "all_",
    is_flag=True,
    help="Every instance of the host (no INSTANCE): convert the host. With --resume: "
    "finish an interrupted host conversion.",
)
@click.option(
    "--from",
    "from_",
    metavar="BACKEND[,BACKEND]",
    help="With --all: only disks on these backends (default: every other than --to).",
)
@click.option(
    "--state",
    type=click.Choice(["shutoff", "running", "any"]),
    default="any",
    show_default=True,
    help="With --all: which instances to move. Running ones move live (with --offline "
    "they are listed as skipped and never touched).",
)
@click.option(
    "--keep-going",
    is_flag=True,
    help="With --all: when an instance fails, go on with the others (default: stop "
    "starting new moves).",
)
@click.option(
    "--nova-conf-after",
    multiple=True,
    metavar="PATH",
    help="The nova.conf file(s) this host will have when the moves are done (like "
    "--assume, whole files).",
)
@click.option(
    "--offline",
    is_flag=True,
    help="Refuse a running instance (it must be shut off) instead of moving it live.",
)
@click.option(
    "--verify",
    type=click.Choice(["mirror", "paused"]),
    default="mirror",
    show_default=True,
    help="Live moves: 'mirror' pivots when libvirt's copy is in sync (every guest write "
    "made during the copy is on the target); 'paused' also suspends the guest for a full "
    "qemu-img compare of source and target before the pivot (the pause is reported).",
)
@click.option(
    "--sync-writes",
    is_flag=True,
    help="Live moves: guest writes complete only once on the target too "
    "(write-blocking), so a busy guest cannot keep the copy from converging.",
)
@click.option(
    "--converge-timeout",
    type=click.IntRange(1),
    default=3600,
    show_default=True,
    metavar="SECONDS",
    help="Live moves: how long the copy may take to be in sync; then it is aborted, the "
    "target removed and the guest stays on its source.",
)
@click.option("--resume", is_flag=True, help="Finish an interrupted migration.")
@click.option(
    "--rollback",
    is_flag=True,
    help="Undo an interrupted (or switched, not cleaned-up) migration.",
)
@click.option("--status", is_flag=True, help="Show migrations in progress, running or interrupted.")
@output_option("table", "json", "yaml")
@click.option(
    "--delete-retained",
    is_flag=True,
    help="Delete the sources earlier migrations kept. With --to: a kept source in the "
    "way of this migration (moving back where it sits) is deleted instead of renamed.",
)
@click.pass_context
def migrate_cmd(ctx: click.Context, instances: tuple[str, ...], **params: Any) -> None:
    """Move the disks of persisted INSTANCEs to another backend.

    Steps, each journaled in <instance dir>/storage.migration.json: plan, preflight,
    create target, copy (qemu-img convert), verify (qemu-img compare), switch (domain
    XML, record, disk.info), cleanup. After a crash: --resume or --rollback.

    A running instance moves live (unless --offline): plan, preflight, create target,
    mirror (libvirt block copy), ready, pivot, switch, cleanup. The copy runs in libvirtd
    and survives a crash of storagectl; --rollback aborts it until the pivot, after which
    only --resume goes on. ploop disks and the config drive move offline only.

    Exactly one mode per command: --to, --resume, --rollback, --status or
    --delete-retained; an option the mode does not use is refused. Every mode that
    changes something prints what it will do and asks for confirmation (--yes skips
    it; without a terminal --yes is required); --dry-run stops after printing.

    Exit status: 0; 1 if any instance was refused or failed, or the confirmation was
    declined; 2 usage error; 130 interrupted (the message says how to resume or roll back).
    """
    app: Application = ctx.obj
    args = Args(**params)
    mode = choose_mode(ctx, args.given())
    if len(app.uris) != 1:
        raise errors.UsageError(reason="migrate works on one host: give one --connect URI")
    settings = Settings(
        uri=app.uris[0],
        nova=app.nova,
        runner=app.runner,
        lock_path=app.lock_path,
        fault=check_fault(os.environ.get(FAULT_ENV)),
        ceph_timeout=args.ceph_timeout,
        say=app.info,
        libvirt=app.libvirt(app.uris[0]),
        nova_after=_nova_after(app, args),
    )
    HANDLERS[mode](app, Engine(settings), instances, args)


def _nova_after(app: Application, args: Args) -> NovaConfig | None:
    """--assume / --nova-conf-after: the nova.conf the host will have; None if not named."""
    if not args.assume and not args.nova_conf_after:
        return None
    assume = tuple(parse_assumption(text) for text in args.assume)
    if args.nova_conf_after:
        return load_nova_config(list(args.nova_conf_after), assume=assume)
    return app.nova_files(assume=assume)


def _migrate_to(app: Application, engine: Engine, instances: tuple[str, ...], args: Args) -> None:
    """--to: plan every INSTANCE, print the plans, confirm, then migrate them one by one."""
    if args.all_ or args.from_ or args.keep_going or args.state != "any":
        if not args.all_:
            raise errors.UsageError(reason="--from, --state and --keep-going go with --all")
        if instances:
            raise errors.UsageError(reason="--all moves every instance of the host: name none")
        _needs_terminal(args.dry_run, args.yes)
        engine.check_driver()
        convert_host(app, engine, _options(app, ("--all",), args, per_disk=False), args)
        return
    options = _options(app, instances, args)
    _needs_terminal(args.dry_run, args.yes)
    engine.check_driver()
    plans, code = _plan_all(app, engine, instances, options, args.fmt)
    if plans and engine.s.nova_after is not None and args.fmt == "table":
        click.echo(_still_to_move(app, engine.s.nova_after, plans))
    if args.dry_run or not plans:
        if args.dry_run and plans:
            app.info("dry run: nothing was changed")
        raise click.exceptions.Exit(code)
    _confirm(app, "Migrate?", args.yes)
    for plan in plans:
        try:
            with _progress(app) as progress:
                engine.s.progress = progress
                engine.run(plan)
            click.echo(f"{plan.name} ({plan.uuid}): migrated to {args.to}{_live_note(engine)}")
        except KeyboardInterrupt:
            _interrupted(app, engine, plan.uuid, f"migration of {plan.name} ({plan.uuid})")
        except errors.StorageCtlError as exc:
            print_error(exc)
            code = exc.exit_code or 1
    raise click.exceptions.Exit(code)


def _live_note(engine: Engine) -> str:
    """`` live (pivot 12 ms, paused 840 ms)`` after a live move, else nothing."""
    if not engine.pivot_seconds:
        return ""
    pivot = max(engine.pivot_seconds.values()) * 1000
    note = f" live (pivot {pivot:.0f} ms"
    if engine.paused_seconds is not None:
        note += f", guest paused {engine.paused_seconds * 1000:.0f} ms"
    engine.pivot_seconds, engine.paused_seconds = {}, None
    return note + ")"


def _options(
    app: Application, instances: tuple[str, ...], args: Args, *, per_disk: bool = True
) -> Options:
    """--to's migration options; a usage error for a command line that names no
    INSTANCE, or asks for data output of a real run."""
    if not instances or not args.to:
        raise errors.UsageError(
            reason="name the INSTANCEs and give --to (or use --resume, "
            "--rollback, --status, --delete-retained)"
        )
    options = Options(
        to=args.to,
        roles=tuple(r.strip() for r in args.disks.split(",") if r.strip()),
        volume_group=args.volume_group,
        pool=args.pool,
        secret_uuid=args.secret_uuid,
        delete_source=args.delete_source,
        delete_retained=args.delete_retained,
        # with --all, --parallel and --bwlimit are the host's (migrate/host.py)
        parallel=args.parallel if per_disk else 1,
        bwlimit=args.bwlimit if per_disk else None,
        sparse_lvs=app.nova.sparse_logical_volumes,
        offline=args.offline,
        verify_paused=args.verify == "paused",
        sync_writes=args.sync_writes,
        converge_timeout=args.converge_timeout,
    )
    if args.fmt != "table" and not args.dry_run:
        raise errors.UsageError(
            reason=f"--output {args.fmt} with --to prints the plan as data: add --dry-run"
        )
    return options


def _plan_all(
    app: Application, engine: Engine, instances: tuple[str, ...], options: Options, fmt: str
) -> tuple[list[Plan], int]:
    """The plans of the INSTANCEs that can be migrated, printed; each refused one is
    told on stderr and makes the exit status its error's."""
    plans, code = [], 0
    for instance in instances:
        try:
            plans.append(engine.prepare(instance, options))
        except errors.StorageCtlError as exc:
            print_error(exc)
            code = exc.exit_code
    if fmt != "table":
        data: dict[str, Any] = {"host": app.uris[0], "plans": [p.to_dict() for p in plans]}
        if engine.s.nova_after is not None:
            data["still_to_move"] = [
                {"uuid": u, "name": n} for u, n in _misread(app, engine.s.nova_after, plans)
            ]
        app.print_data(data, fmt)
    else:
        for plan in plans:
            click.echo("\n".join(describe(plan)))
    return plans, code


def _misread(app: Application, nova: NovaConfig, plans: list[Plan]) -> list[tuple[str, str]]:
    """The other instances of the host that Nova, with ``nova``, would misread."""
    moving = {p.uuid for p in plans}
    return [(u, n) for u, n in still_misread(app.uris[0], nova, app.runner) if u not in moving]


def _still_to_move(app: Application, nova: NovaConfig, plans: list[Plan]) -> str:
    """What else must move before the host's nova.conf can say what ``nova`` says."""
    others = _misread(app, nova, plans)
    if not others:
        return "no other instance of this host would be misread with that nova.conf"
    names = ", ".join(f"{n} ({u})" for u, n in others)
    return f"before nova.conf says so, these instances must move too ({len(others)}): {names}"


def _status(app: Application, engine: Engine, instances: tuple[str, ...], args: Args) -> None:
    """--status: the migrations in progress (of INSTANCE, or all), running or interrupted."""
    if len(instances) > 1:
        raise errors.UsageError(reason="--status takes at most one INSTANCE")
    if not instances and args.fmt == "table":
        for line in host_status_lines(app, engine):
            click.echo(line)
    rows = engine.status(instances[0] if instances else None)
    unreadable = [r for r in rows if r["state"] == "unreadable"]
    if args.fmt != "table":
        data = {"host": app.uris[0], "migrations": rows}
        if not instances:  # the host conversion in progress, if any (its journal)
            data["host_conversion"] = host_journal_data(engine)
        app.print_data(data, args.fmt)
        for r in unreadable:
            app.info(f"{r['uuid']}: {r['error']}")
        if unreadable:
            sys.exit(1)
        return
    if not rows:
        click.echo("no migration in progress")
        return
    emit_table(
        app.console,
        ("INSTANCE", "NAME", "TO", "STEP", "STATE", "DISKS", "ERROR"),
        [
            (
                (
                    r["uuid"],
                    r["name"],
                    r["to"],
                    f"{r['step']} ({r['phase']})",
                    r["state_detail"],
                    ",".join(r["disks"]),
                    r["error"] or "-",
                ),
                "red" if r["state"] in ("interrupted", "unreadable") else None,
            )
            for r in rows
        ],
    )
    if unreadable:
        for r in unreadable:
            app.info(f"{r['uuid']}: {r['error']}")
        sys.exit(1)
    for r in rows:
        if r["state"] == "interrupted":
            app.info(
                f"{r['uuid']}: interrupted; finish with: {command(app, 'resume', r['uuid'])}"
                f"  or undo with: {command(app, 'rollback', r['uuid'])}"
            )


def _resume(app: Application, engine: Engine, instances: tuple[str, ...], args: Args) -> None:
    """--resume: finish an interrupted migration."""
    if args.all_:
        if instances:
            raise errors.UsageError(reason="--resume --all takes no INSTANCE")
        _needs_terminal(args.dry_run, args.yes)
        engine.check_driver()
        resume_host(app, engine, args)
        return
    instance = _preview(app, engine, "resume", instances, args, "Resume?")
    if instance is None:
        return
    with _interruptible(app, engine, "resume", instance), _progress(app) as progress:
        engine.s.progress = progress
        engine.resume(instance)
    click.echo(f"{instance}: migration finished")


def _rollback(app: Application, engine: Engine, instances: tuple[str, ...], args: Args) -> None:
    """--rollback: undo an interrupted (or switched, not cleaned-up) migration."""
    instance = _preview(app, engine, "rollback", instances, args, "Roll back?")
    if instance is None:
        return
    with _interruptible(app, engine, "rollback", instance):
        engine.rollback(instance)
    click.echo(f"{instance}: migration rolled back")


def _delete_retained(
    app: Application, engine: Engine, instances: tuple[str, ...], args: Args
) -> None:
    """--delete-retained: delete the sources earlier migrations kept."""
    instance = _preview(app, engine, "delete_retained", instances, args, "Delete?")
    if instance is None:
        return
    with _interruptible(app, engine, "delete_retained", instance):
        for item in engine.delete_retained(instance) or ["(nothing retained)"]:
            click.echo(f"deleted {item}")


#: What each mode of ``migrate`` runs (:data:`MODES`), once :func:`choose_mode` chose it.
HANDLERS: dict[str, Callable[[Application, Engine, tuple[str, ...], Args], None]] = {
    "to": _migrate_to,
    "resume": _resume,
    "rollback": _rollback,
    "status": _status,
    "delete_retained": _delete_retained,
}


def _preview(
    app: Application,
    engine: Engine,
    mode: str,
    instances: tuple[str, ...],
    args: Args,
    question: str,
) -> str | None:
    """A journal mode's one INSTANCE, once what the mode would do is printed and
    confirmed; None after --dry-run."""
    if len(instances) != 1:
        raise errors.UsageError(reason=f"{_flag(mode)} takes exactly one INSTANCE")
    instance = instances[0]
    _needs_terminal(args.dry_run, args.yes)
    if mode in ("resume", "rollback"):
        engine.check_driver()
    click.echo("\n".join(engine.preview(mode, instance)))
    if args.dry_run:
        app.info("dry run: nothing was changed")
        return None
    _confirm(app, question, args.yes)
    return instance


@contextlib.contextmanager
def _interruptible(app: Application, engine: Engine, mode: str, instance: str) -> Iterator[None]:
    """Ctrl-C in a journal mode: say where it stopped and how to finish it (exit 130)."""
    try:
        yield
    except KeyboardInterrupt:
        _interrupted(app, engine, engine.resolve(instance), f"{_flag(mode)} of {instance}")


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdin
        return False


def _needs_terminal(dry_run: bool, yes: bool) -> None:
    if not dry_run and not yes and not stdin_is_terminal():
        raise errors.UsageError(
            reason="stdin is not a terminal: confirm with --yes (or look first with --dry-run)"
        )


def _confirm(app: Application, question: str, yes: bool) -> None:
    if yes:
        return
    try:
        ok = click.confirm(question, default=False, err=True)
    except click.Abort:
        ok = False
    if not ok:
        app.abort("Declined: not confirmed, nothing was changed", 1)


def command(app: Application, mode: str, uuid: str) -> str:
    """The exact command line that runs ``migrate --<mode> uuid`` on this host."""
    argv = ["storagectl", "-c", app.uris[0]]
    for conf in app.nova_conf:
        argv += ["--nova-conf", conf]
    if app.lock_path != DEFAULT_LOCK_PATH:
        argv += ["--lock-path", app.lock_path]
    argv += ["migrate", _flag(mode), uuid]
    return shlex.join(argv)


def _interrupted(app: Application, engine: Engine, uuid: str, what: str) -> NoReturn:
    """Ctrl-C: say where the migration stopped and the exact commands to finish it."""
    try:
        rows = engine.status(uuid)
    except (errors.StorageCtlError, OSError):
        rows = []
    if rows:
        r = rows[0]
        app.abort(
            f"Interrupted: {what} stopped at {r['step']} ({r['phase']}); finish it with: "
            f"{command(app, 'resume', uuid)}  or undo it with: {command(app, 'rollback', uuid)}",
            130,
        )
    app.abort(f"Interrupted: {what}; no migration of {uuid} is in progress", 130)


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
