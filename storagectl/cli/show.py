"""storagectl show: print an instance's storage record."""

from __future__ import annotations

import os

import click

from storagectl import errors
from storagectl.cli.app import Application, output_option
from storagectl.cli.render import emit_table, human_size
from storagectl.host.hosts import scan_hosts
from storagectl.model.naming import is_uuid
from storagectl.record.record import read_record, record_path


class NoSuchInstance(errors.InstanceNotFound):
    template = "no such instance %(instance)s: %(why)s"


class AmbiguousInstance(errors.StorageCtlError):
    template = "%(instance)s names more than one instance: %(matches)s; give the uuid"


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
    if is_uuid(instance):
        uuid = instance.lower()
        inst_dir = app.nova.instance_dir(uuid)
        if not os.path.isdir(inst_dir):
            raise NoSuchInstance(instance=instance, why=f"no instance directory {inst_dir}")
    else:
        uuid = _uuid_of(app, instance)
        inst_dir = app.nova.instance_dir(uuid)
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


def _uuid_of(app: Application, name: str) -> str:
    """The uuid of the domain named ``name``: exactly one across the --connect hosts."""
    matches, unreachable = [], []
    for scan in scan_hosts(app.uris):
        if scan.report.error:
            unreachable.append(f"{scan.report.uri} ({scan.report.error})")
        for dom in scan.domains:
            if dom.info.name == name:
                host = scan.report.hostname or scan.report.uri
                matches.append((dom.info.uuid, f"{dom.info.uuid} on {host} ({scan.report.uri})"))
    if len({uuid for uuid, _ in matches}) > 1:
        raise AmbiguousInstance(instance=name, matches=", ".join(m for _, m in matches))
    if matches:
        return matches[0][0]
    why = f"no domain of that name on {', '.join(app.uris)}"
    if unreachable:
        why += f" (not scanned: {', '.join(unreachable)})"
    raise NoSuchInstance(instance=name, why=why)
