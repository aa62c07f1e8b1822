"""storagectl inspect: scan hypervisors and infer each instance's storage layout."""

from __future__ import annotations

import click

from storagectl.audit.audit import with_host
from storagectl.cli.app import Application, assume_option, output_option
from storagectl.inspect.inspection import inspect_hosts


@click.command("inspect")
@click.argument("instances", nargs=-1, metavar="[INSTANCE]...")
@output_option("table", "json", "yaml")
@assume_option
@click.pass_obj
def inspect_cmd(app: Application, instances: tuple[str, ...], fmt: str) -> None:
    """Infer the storage layout of every instance (or the INSTANCEs, by uuid or name).

    Reads the domain XML of every domain on each --connect host, nova.conf, disk.info
    and LVM/Ceph metadata; reads disk headers only with storagectl's own bounded
    inspector, to flag danger. Exit status: 0, or 1 when a host could not be scanned or
    an INSTANCE was not found. Critical findings do not change it (that is audit's job).
    """
    result = inspect_hosts(app.uris, app.nova, app.runner, instances)
    if fmt == "table":
        from storagectl.cli.render import layouts_table  # rich: only when drawn

        layouts_table(app.console, result.instances)
    else:
        data = result.to_dict()
        for inst in data["instances"]:  # every finding in JSON names its host
            inst["findings"] = [with_host(f, inst["host"]) for f in inst["findings"]]
        app.print_data(data, fmt)
    status = app.report_scan_problems(result)
    raise click.exceptions.Exit(status)
