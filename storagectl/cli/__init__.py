"""storagectl's command line: the root group, global options and the error renderer.

Every command module under ``storagectl/cli/`` is a thin click command; the logic lives
in ``storagectl.layouts``, ``storagectl.backends`` and ``storagectl.migrate``.

Errors: a :class:`storagectl.errors.StorageCtlError` is shown as one line,
``--> ClassName: message``, with its exit status; any other exception as
``--> UnexpectedError: ...`` with a pointer to the log, where the traceback is.
``STORAGECTL_DEBUG=1`` re-raises instead, for debugging.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from storagectl import __version__, errors
from storagectl.cli.app import DEFAULT_LOCK_PATH, DEFAULT_LOG_FILE, Application

LOG = logging.getLogger("storagectl")


def _debug() -> bool:
    return os.environ.get("STORAGECTL_DEBUG", "") not in ("", "0")


# Command name -> "module:attribute". Modules are imported only when their command runs
# (or for --help), so `storagectl inspect` does not pay for oslo.config via lockutils.
COMMANDS = {
    "inspect": "storagectl.cli.inspect:inspect_cmd",
    "persist": "storagectl.cli.persist:persist_cmd",
    "show": "storagectl.cli.show:show_cmd",
    "audit": "storagectl.cli.audit:audit_cmd",
    "migrate": "storagectl.cli.migrate:migrate_cmd",
    "sandbox": "storagectl.cli.sandbox:sandbox_group",
}


class RootGroup(click.Group):
    """Loads command modules lazily and renders storagectl errors once, at the top."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except errors.StorageCtlError as exc:
            LOG.debug("command failed", exc_info=True)
            if _debug():
                raise
            _render(f"{type(exc).__name__}: {exc}")
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            _render("Interrupted")
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            LOG.debug("unexpected error", exc_info=True)  # to the log file, not stderr
            if _debug():
                raise
            app = ctx.obj if isinstance(ctx.obj, Application) else None
            where = app.log_file if app and app.log_file else "the log (use --log-file)"
            _render(f"UnexpectedError: {type(exc).__name__}: {exc} (traceback in {where})")
            ctx.exit(1)


def _render(message: str) -> None:
    click.secho(f"--> {message}", fg="red", err=True)


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="storagectl")
@click.option(
    "-c",
    "--connect",
    "connect",
    multiple=True,
    metavar="URI",
    envvar="STORAGECTL_CONNECT",
    show_envvar=True,
    help="libvirt URI of a hypervisor; repeat for several. "
    "[default: $LIBVIRT_DEFAULT_URI or qemu:///system]",
)
@click.option(
    "--nova-conf",
    "nova_conf",
    multiple=True,
    metavar="PATH",
    envvar="STORAGECTL_NOVA_CONF",
    show_envvar=True,
    help="nova.conf to read; repeat for several, later ones override earlier "
    "(as oslo.config). [default: /etc/nova/nova.conf]",
)
@click.option(
    "--lock-path",
    default=DEFAULT_LOCK_PATH,
    show_default=True,
    metavar="DIR",
    envvar="STORAGECTL_LOCK_PATH",
    show_envvar=True,
    help="Directory for per-instance lock files.",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    envvar="STORAGECTL_VERBOSE",
    show_envvar=True,
    help="More output on stderr (-v info, -vv debug).",
)
@click.option(
    "--log-file",
    metavar="FILE",
    envvar="STORAGECTL_LOG_FILE",
    show_envvar=True,
    help=f"Debug log, with every command run and tracebacks. [default: "
    f"{DEFAULT_LOG_FILE} when writable]",
)
@click.pass_context
def cli(
    ctx: click.Context,
    connect: tuple[str, ...],
    nova_conf: tuple[str, ...],
    lock_path: str,
    verbose: int,
    log_file: str | None,
) -> None:
    """Inspect, record, audit and migrate the storage layout of libvirt/Nova compute hosts.

    Nova never recorded how an instance's disks are stored; it guesses from the host's
    current config and from disk contents. storagectl infers each instance's layout once,
    from the domain XML and host metadata, records it (storage.yaml), and from then on
    trusts only the record.
    """
    app = Application(
        connect=connect,
        nova_conf=nova_conf,
        lock_path=lock_path,
        verbose=verbose,
        log_file=log_file,
    )
    ctx.obj = app
    app.setup_logging()
    LOG.debug("storagectl %s: %s", __version__, " ".join(sys.argv))


def main() -> None:
    cli(prog_name="storagectl")
