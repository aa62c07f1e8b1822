"""storagectl persist: write each instance's explicit storage record, once."""

from __future__ import annotations

import click

from storagectl import errors
from storagectl.cli.app import Application, output_option
from storagectl.inspect.inspection import inspect_hosts
from storagectl.record.persist import REFUSED, WOULD_WRITE, persist

_STYLE = {"written": "green", "unchanged": None, "refused": "bold red", "would-write": "cyan"}


@click.command("persist")
@click.argument("instances", nargs=-1, metavar="[INSTANCE]...")
@click.option("--all", "all_", is_flag=True, help="Every instance of every --connect host.")
@click.option(
    "--force",
    is_flag=True,
    help="Replace a different (or unreadable) record; the old file is kept as "
    "storage.yaml.<timestamp>.bak.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Report what a real run would do (unchanged, would-write, or refused with the "
    "diff and exit 1); write nothing.",
)
@output_option("table", "json", "yaml")
@click.pass_obj
def persist_cmd(
    app: Application, instances: tuple[str, ...], all_: bool, force: bool, dry_run: bool, fmt: str
) -> None:
    """Infer each INSTANCE's layout (as inspect does) and record it in storage.yaml.

    Refuses an instance with a critical finding (resolve it first) and one whose
    existing record differs (shows the diff; --force replaces it). LVM disks get
    storagectl.* LV tags and RBD disks image-meta, mirroring the record. Exit status: 0,
    or 1 if any instance was refused or not found or a host could not be scanned.
    """
    if bool(instances) == all_:
        raise errors.UsageError(reason="name the INSTANCEs to persist, or give --all (not both)")
    result = inspect_hosts(app.uris, app.nova, app.runner, instances, use_records=False)
    outcomes = persist(
        result,
        app.nova,
        app.runner,
        lock_path=app.lock_path,
        force=force,
        dry_run=dry_run,
        remote_hosts=result.remote_hosts,
    )
    if fmt != "table":
        data = []
        for o in outcomes:
            item = o.to_dict()
            if o.status == WOULD_WRITE and o.record is not None:
                item["record"] = o.record.to_dict()
            data.append(item)
        app.print_data({"instances": data}, fmt)
    else:
        for o in outcomes:
            if o.status == WOULD_WRITE and o.record is not None:
                click.echo(f"# {o.path}")
                click.echo(o.record.to_yaml())
        from storagectl.cli.render import emit_table  # rich: only when drawn

        emit_table(
            app.console,
            ("INSTANCE", "NAME", "STATUS", "DETAIL"),
            [
                (
                    (
                        o.uuid,
                        o.name,
                        o.status,
                        o.reason or o.backup and f"backup {o.backup}" or o.path or "-",
                    ),
                    _STYLE.get(o.status),
                )
                for o in outcomes
            ],
        )
        for o in outcomes:
            if o.diff:
                click.echo(f"\n--- {o.uuid}: recorded vs inferred now")
                click.echo(o.diff, nl=False)
    status = app.report_scan_problems(result)
    if any(o.status == REFUSED for o in outcomes):
        status = 1
    raise click.exceptions.Exit(status)
