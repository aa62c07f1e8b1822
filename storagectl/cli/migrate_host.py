"""``storagectl migrate --all``: convert the whole host (storagectl/migrate/host.py)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from storagectl import errors
from storagectl.backends import registry
from storagectl.host.config import load_nova_config, parse_assumption
from storagectl.host.locks import host_lock
from storagectl.migrate import host
from storagectl.migrate.copy import NullProgress
from storagectl.migrate.engine import Engine
from storagectl.migrate.plan import MigrationRefused

if TYPE_CHECKING:
    from storagectl.cli.app import Application
    from storagectl.cli.migrate import Args
    from storagectl.migrate.plan import Options


@contextlib.contextmanager
def conversion_lock(app: Application, uri: str) -> Iterator[None]:
    """One host conversion at a time (``--all`` and ``--resume --all`` write the same host
    journal); the instance locks keep each instance's data safe either way."""
    try:
        with host_lock(app.lock_path, "conversion"):
            yield
    except errors.LockBusy as exc:
        raise MigrationRefused(
            instance=f"the host {uri}",
            reason=f"another storagectl process converts it now ({exc}); see migrate --status",
        ) from exc


def convert_host(app: Application, engine: Engine, options: Options, args: Args) -> None:
    """``--all --to X``: plan every instance, print the host plan, confirm, run, report."""
    with conversion_lock(app, engine.s.uri):
        _convert_host(app, engine, options, args)


def _convert_host(app: Application, engine: Engine, options: Options, args: Args) -> None:
    s = engine.s
    journal = host.host_journal_path(s.nova)
    if host.read_host_journal(journal) is not None:
        raise errors.UsageError(
            reason=f"a host conversion is in progress ({journal}): finish it with "
            "storagectl migrate --resume --all (see migrate --status)"
        )
    if args.bwlimit and args.bwlimit < args.parallel:
        raise errors.UsageError(
            reason=f"--bwlimit {args.bwlimit} MiB/s is shared by the --parallel {args.parallel} "
            "moves, at least 1 MiB/s each: lower --parallel or raise --bwlimit"
        )
    sources = tuple(x.strip() for x in (args.from_ or "").split(",") if x.strip())
    unknown = [x for x in sources if x not in registry.all_names()]
    if unknown:
        raise errors.UsageError(
            reason=f"--from {','.join(unknown)}: not a backend ({', '.join(registry.all_names())})"
        )
    settings = host.target_settings(options.to, s.nova, options)
    if s.nova_after is None:  # converting the host: its nova.conf will say the target's
        s.nova_after = app.nova_files(assume=settings)
    nova_conf = [f"[{sec}] {opt} = {val}" for sec, opt, val in settings]
    policy = host.Policy(sources, args.parallel, args.bwlimit, args.keep_going, args.state)
    hp = host.plan_host(engine.prepare, engine.storage, s, options, policy, nova_conf)
    if args.assume or args.nova_conf_after:
        hp.nova_after = {
            "files": [os.path.abspath(f) for f in args.nova_conf_after],
            "assume": [list(parse_assumption(a)) for a in args.assume],
        }
    planned = {i.uuid for i in hp.planned}
    blocking = [
        (u, n) for u, n in host.still_misread(s.uri, s.nova_after, s.runner) if u not in planned
    ]
    if args.fmt != "table":
        data: dict[str, Any] = hp.to_dict()
        data["still_misread_after"] = [{"uuid": u, "name": n} for u, n in blocking]
        app.print_data(data, args.fmt)
    else:
        click.echo("\n".join(hp.lines()))
        if blocking:
            names = ", ".join(f"{n} ({u})" for u, n in blocking)
            click.echo(
                f"  after these moves Nova would still misread {len(blocking)} instance(s) "
                f"with that nova.conf: {names}"
            )
    if args.dry_run:
        app.info("dry run: nothing was changed")
        raise click.exceptions.Exit(1 if any(i.status == host.REFUSED for i in hp.items) else 0)
    if not hp.planned:
        click.echo("nothing to move")
        raise click.exceptions.Exit(1 if hp.items else 0)
    from storagectl.cli.migrate import _confirm  # the one confirmation of every mode

    _confirm(app, "Convert?", args.yes)
    _run(app, engine, hp, journal)


def resume_host(app: Application, engine: Engine, args: Args) -> None:
    """``--resume --all``: finish every instance's journal, then move the ones not started."""
    with conversion_lock(app, engine.s.uri):
        _resume_host(app, engine, args)


def _resume_host(app: Application, engine: Engine, args: Args) -> None:
    s = engine.s
    journal = host.host_journal_path(s.nova)
    data = host.read_host_journal(journal)
    if data is None:
        raise errors.UsageError(reason=f"no host conversion is in progress (no {journal})")
    hp = host.from_journal(data, journal)
    assume = tuple(tuple(x) for x in data.get("assume") or ())
    if hp.nova_after is not None:  # what the operator named when the conversion started
        given = tuple(tuple(a) for a in hp.nova_after["assume"])
        if hp.nova_after["files"]:
            s.nova_after = load_nova_config(hp.nova_after["files"], assume=given)
        else:
            s.nova_after = app.nova_files(assume=given)
    elif assume:
        s.nova_after = app.nova_files(assume=assume)
    todo = [i for i in hp.items if i.status in (host.PLANNED, host.FAILED)]
    click.echo(f"resume the conversion of {hp.uri} to {hp.to} ({len(todo)} instance(s) left)")
    for item in todo:
        if host.has_instance_journal(s.nova, item.uuid):
            how = "finish its migration"
        elif host.already_moved(s.nova, item.uuid, hp.options):
            how = "moved already (after the host journal was last written)"
        else:
            how = "move it"
        click.echo(f"  {item.name} ({item.uuid}): {item.status}: {how}")
    if args.dry_run:
        app.info("dry run: nothing was changed")
        return
    from storagectl.cli.migrate import _confirm

    _confirm(app, "Resume?", args.yes)
    for item in todo:
        item.status, item.reason = host.PLANNED, None
        if host.has_instance_journal(s.nova, item.uuid):
            continue  # its own journal finishes it
        if host.already_moved(s.nova, item.uuid, hp.options):
            item.status = host.DONE  # finished after the host journal was last written
            continue
        try:
            item.plan = engine.prepare(item.uuid, hp.options)
        except errors.StorageCtlError as exc:
            item.status, item.reason = host.REFUSED, str(exc)
    _run(app, engine, hp, journal, started_at=data.get("started_at"), assume=assume)


def _run(
    app: Application,
    engine: Engine,
    hp: host.HostPlan,
    journal: str,
    *,
    started_at: str | None = None,
    assume: tuple = (),
) -> None:
    s = engine.s
    checked = set(engine._checked)  # noqa: SLF001 - preflighted by this command's prepare

    def run_one(item: host.HostItem) -> None:
        worker = Engine(replace(s, libvirt=app.libvirt(s.uri), progress=NullProgress()))
        worker._checked |= checked  # noqa: SLF001
        if host.has_instance_journal(s.nova, item.uuid):
            worker.resume(item.uuid)
        else:
            assert item.plan is not None
            worker.run(item.plan)

    def done(item: host.HostItem) -> None:
        tail = f": {item.reason}" if item.reason else ""
        click.echo(f"{item.name} ({item.uuid}): {item.status} in {item.seconds} s{tail}")

    t0 = time.monotonic()
    settings = assume or tuple(_settings(hp.nova_conf))
    try:
        host.run_host(hp, journal, run_one, on_done=done, started_at=started_at, assume=settings)
    except KeyboardInterrupt:
        app.info(
            f"interrupted: the host journal {journal} says how far it got; finish with "
            "storagectl migrate --resume --all"
        )
        raise click.exceptions.Exit(130) from None
    rep = host.report(hp, time.monotonic() - t0, s.nova, engine.storage)
    nova_after = s.nova_after or app.nova_files(assume=settings)
    click.echo("\n".join(rep.lines(hp.uri, host.still_misread(s.uri, nova_after, s.runner))))
    if not any(i.status in (host.PLANNED, host.FAILED) for i in hp.items):
        host.remove_host_journal(journal)
    raise click.exceptions.Exit(1 if rep.failed else 0)


def _settings(lines: list[str]) -> list[tuple[str, str, str]]:
    """``[section] option = value`` lines back into settings."""
    return [parse_assumption(line) for line in lines]


def host_journal_data(engine: Engine) -> dict[str, Any] | None:
    """The host journal as it is (``migrate --status -o json``), None if there is none."""
    return host.read_host_journal(host.host_journal_path(engine.s.nova))


def host_status_lines(app: Application, engine: Engine) -> list[str]:
    """The host conversion in progress, if any (``migrate --status``)."""
    from storagectl.audit.interrupted import pid_alive

    journal = host.host_journal_path(engine.s.nova)
    data = host.read_host_journal(journal)
    if data is None:
        return []
    hp = host.from_journal(data, journal)
    counts: dict[str, int] = {}
    for item in hp.items:
        counts[item.status] = counts.get(item.status, 0) + 1
    pid = data.get("pid")
    alive = isinstance(pid, int) and pid_alive(pid)
    state = f"running (pid {pid})" if alive else f"interrupted (pid {pid} is gone)"
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    lines = [f"host conversion to {hp.to} started {data.get('started_at')}: {state}: {summary}"]
    lines += [f"  {i.name} ({i.uuid}): {i.status}" for i in hp.items]
    if not alive:
        lines.append("  finish with: storagectl migrate --resume --all")
    return lines
