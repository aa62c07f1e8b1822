"""storagectl's command line: the root group, global options and the error renderer.

Every command module under ``storagectl/cli/`` is a thin click command; the logic lives
in the folders beside it (``model``, ``host``, ``backends``, ``inspector``, ``inspect``,
``record``, ``audit``, ``migrate``, ``sandbox``).

Errors: a :class:`storagectl.errors.StorageCtlError` is shown as one line,
``--> ClassName: message``, with its exit status; any other exception as
``--> UnexpectedError: ...`` with a pointer to the log, where the traceback is.
``STORAGECTL_DEBUG=1`` re-raises instead, for debugging.

Under ``audit`` and ``fleet`` every failure exits 3 (Nagios UNKNOWN): 1 and 2 mean
findings there.
Output cut short by its reader (``storagectl inspect | head -1``) ends quietly with
status 141 (128 + SIGPIPE, as a C tool killed by the signal).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from storagectl import __version__, errors
from storagectl.cli.app import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_LOCK_PATH,
    DEFAULT_LOG_FILE,
    Application,
    exit_on_broken_pipe,
)
from storagectl.cli.render import print_error

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
    "fleet": "storagectl.cli.fleet:fleet_group",
}
# Commands whose exit status is Nagios's: every failure to run them is 3 (UNKNOWN), as
# 1 and 2 mean findings.
NAGIOS_COMMANDS = frozenset({"audit", "fleet"})


class RootGroup(click.Group):
    """Loads command modules lazily and renders storagectl errors once, at the top."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def make_context(self, *args, **kwargs) -> click.Context:  # noqa: ANN002, ANN003
        try:
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:  # --help or --version into a closed pipe
            exit_on_broken_pipe()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        # The command about to run, so its failures get its exit status (audit, fleet: 3).
        pending = [*getattr(ctx, "_protected_args", ()), *ctx.args]
        ctx.meta["storagectl.command"] = pending[0] if pending else None
        return rest

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        failed = _UNKNOWN if ctx.meta.get("storagectl.command") in NAGIOS_COMMANDS else None
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if failed is not None and exc.exit_code not in (0, failed):
                exc.exit_code = failed
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            exit_on_broken_pipe()
        except errors.StorageCtlError as exc:
            LOG.debug("command failed", exc_info=True)
            if _debug():
                raise
            print_error(exc)
            ctx.exit(failed or exc.exit_code)
        except KeyboardInterrupt:
            print_error("Interrupted")
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            LOG.debug("unexpected error", exc_info=True)  # to the log file, not stderr
            if _debug():
                raise
            app = ctx.obj if isinstance(ctx.obj, Application) else None
            where = app.log_file if app and app.log_file else "the log (use --log-file)"
            text = " ".join(str(exc).split())
            print_error(f"UnexpectedError: {type(exc).__name__}: {text} (traceback in {where})")
            ctx.exit(failed or 1)


_UNKNOWN = 3  # Nagios UNKNOWN: audit's status for "could not audit"


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
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_CONNECT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    envvar="STORAGECTL_CONNECT_TIMEOUT",
    show_envvar=True,
    help="Give up connecting to a hypervisor after this long (it is then reported "
    "unreachable; the other hosts are still scanned).",
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
    connect_timeout: float,
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
    for uri in connect:
        if not uri.strip():
            # libvirt would take "" to mean its own default hypervisor: never guess.
            raise click.BadParameter(
                "an empty URI; give a libvirt URI such as qemu:///system",
                param_hint="'-c' / '--connect'",
            )
    app = Application(
        connect=tuple(uri.strip() for uri in connect),
        connect_timeout=connect_timeout,
        nova_conf=nova_conf,
        lock_path=lock_path,
        verbose=verbose,
        log_file=log_file,
        # A caller (a test) may pass obj=Application(libvirt_factory=...): it carries over.
        libvirt_factory=ctx.obj.libvirt_factory if isinstance(ctx.obj, Application) else None,
    )
    ctx.obj = app
    from storagectl.host import hosts

    hosts.CONNECT_TIMEOUT = connect_timeout
    app.setup_logging()
    LOG.debug("storagectl %s: %s", __version__, " ".join(sys.argv))


def main() -> None:
    try:
        cli(prog_name="storagectl")
    finally:
        # Output still buffered is written now: its reader may be gone too.
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            exit_on_broken_pipe()
