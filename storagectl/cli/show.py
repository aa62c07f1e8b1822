"""storagectl show: print an instance's storage record."""

from __future__ import annotations

import os

import click

from storagectl import errors
from storagectl.cli.app import Application, output_option
from storagectl.cli.render import emit_table, human_size
from storagectl.host.resolve import NoSuchInstance, instance_uuid, uuid_by_name
from storagectl.model.naming import is_uuid
from storagectl.record.record import read_record, record_path


class RecordNotFound(errors.StorageCtlError):
    template = (
        "instance %(instance)s has no storage record %(path)s "
        "(run: storagectl persist %(instance)s)"
    )


@click.command("show")
@click.argument("instance")
@output_option("yaml", "json", "table")
@click.pass_obj
def show_cmd(app: Application, instance: str, fmt: str) -> None:
    """Print INSTANCE's storage record (by uuid, or by domain name via --connect)."""
    uuid = instance_uuid(instance, lambda name: uuid_by_name(name, app.uris))
    inst_dir = app.nova.instance_dir(uuid)
    # A domain found by its name exists; a uuid given must have its instance directory.
    if is_uuid(instance) and not os.path.isdir(inst_dir):
        raise NoSuchInstance(instance=instance, why=f"no instance directory {inst_dir}")
    record = read_record(inst_dir, expect_uuid=uuid)
    if record is None:
        raise RecordNotFound(instance=instance, path=str(record_path(inst_dir)))
    if fmt == "yaml":
        click.echo(record.to_yaml(), nl=False)
    elif fmt == "json":
        app.print_data(record.to_dict(), "json")
    else:
        _table(app, record.to_dict())


def _table(app: Application, data: dict) -> None:
    """One row per disk; the record's other fields as ``key: value`` lines on stderr-free
    stdout above it (the yaml/json outputs carry everything)."""
    inst = data.get("instance", {})
    click.echo(f"instance {inst.get('uuid')} ({inst.get('name')}) on {inst.get('host')}")
    rows = []
    for disk in data.get("disks", []):
        where = disk.get("location") or {}
        location = where.get("path") or "/".join(
            str(where[k]) for k in ("volume_group", "pool", "volume") if where.get(k)
        )
        rows.append(
            (
                (
                    str(disk.get("name", "-")),
                    str(disk.get("role", "-")),
                    str(disk.get("target", "-")),
                    str(disk.get("backend", "-")),
                    str(disk.get("format") or "-"),
                    location or "-",
                    human_size(disk.get("virtual_size")),
                    str(
                        (disk.get("backing") or {}).get("path", "-")
                        if isinstance(disk.get("backing"), dict)
                        else disk.get("backing") or "-"
                    ),
                ),
                None,
            )
        )
    emit_table(
        app.console,
        ("DISK", "ROLE", "TARGET", "BACKEND", "FORMAT", "LOCATION", "VSIZE", "BACKING"),
        rows,
        drop=("BACKING", "VSIZE"),
    )
    retained = data.get("retained_sources") or []
    if retained:
        click.echo(
            f"{len(retained)} retained source(s): storagectl migrate --delete-retained "
            f"{inst.get('uuid')}"
        )
