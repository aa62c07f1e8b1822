"""storagectl show: print an instance's storage record."""

from __future__ import annotations

import click

from storagectl import errors
from storagectl.cli.app import Application, output_option
from storagectl.layouts.hosts import scan_hosts
from storagectl.layouts.naming import is_uuid
from storagectl.layouts.record import read_record, record_path


class RecordNotFound(errors.StorageCtlError):
    template = (
        "instance %(instance)s has no storage record %(path)s "
        "(run: storagectl persist %(instance)s)"
    )


@click.command("show")
@click.argument("instance")
@output_option("yaml", "json")
@click.pass_obj
def show_cmd(app: Application, instance: str, fmt: str) -> None:
    """Print INSTANCE's storage record (by uuid, or by domain name via --connect)."""
    uuid = instance.lower() if is_uuid(instance) else _uuid_of(app, instance)
    inst_dir = app.nova.instance_dir(uuid)
    record = read_record(inst_dir, expect_uuid=uuid)
    if record is None:
        raise RecordNotFound(instance=instance, path=str(record_path(inst_dir)))
    if fmt == "yaml":
        click.echo(record.to_yaml(), nl=False)
    else:
        app.print_data(record.to_dict(), "json")


def _uuid_of(app: Application, name: str) -> str:
    for scan in scan_hosts(app.uris):
        for dom in scan.domains:
            if dom.info.name == name:
                return dom.info.uuid
    raise errors.InstanceNotFound(instance=name, hosts=", ".join(app.uris))
