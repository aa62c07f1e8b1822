"""The application object every command receives on ``ctx.obj``.

It owns the rich consoles, the global settings, logging, and the shared services
(command runner, nova.conf) so command modules stay a few dozen lines. Nothing here
touches the host until a command asks for it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

import click

from storagectl import errors
from storagectl.cli.render import error_line, print_error
from storagectl.host.config import (
    DEFAULT_NOVA_CONF,
    NovaConfig,
    check_instances_path,
    load_nova_config,
    parse_assumption,
)
from storagectl.host.process import Runner

if TYPE_CHECKING:
    from rich.console import Console

    from storagectl.host.libvirt_port import LibvirtPort

LOG = logging.getLogger("storagectl")
DEFAULT_URI = "qemu:///system"
DEFAULT_LOCK_PATH = "/var/lib/storagectl/locks"
DEFAULT_LOG_FILE = "/var/log/storagectl/storagectl.log"
DEFAULT_CONNECT_TIMEOUT = 10.0


class FormatChoice(click.Choice):
    """A choice of output formats that also accepts old spellings (``text`` for
    ``table``), not listed in ``--help``, converted to the current one."""

    def __init__(self, formats: Sequence[str], aliases: Mapping[str, str]) -> None:
        super().__init__(list(formats))
        self.aliases = dict(aliases)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value in self.aliases:
            value = self.aliases[value]
        return super().convert(value, param, ctx)


class DiskRoles(click.ParamType):
    """``--disks root,ephemeral``: comma-separated disk roles, each one of ``valid``; a
    usage error listing the valid roles otherwise. Converts to the cleaned-up string."""

    name = "roles"

    def __init__(self, valid: Sequence[str]) -> None:
        self.valid = tuple(str(v) for v in valid)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        roles = [r.strip() for r in str(value).split(",") if r.strip()]
        bad = [r for r in roles if r not in self.valid]
        if bad or not roles:
            what = f"{', '.join(bad)}: not a disk role" if bad else "no disk role given"
            self.fail(f"{what}; valid roles: {', '.join(self.valid)}", param, ctx)
        return ",".join(dict.fromkeys(roles))


def output_option(
    *formats: str, aliases: Mapping[str, str] | None = None
) -> Callable[[Callable], Callable]:
    """``-o/--output FORMAT`` (into ``fmt``), the first of ``formats`` the default: one
    spelling for every command (``table|json|yaml``)."""
    return click.option(
        "-o",
        "--output",
        "fmt",
        type=FormatChoice(formats, aliases or {}),
        default=formats[0],
        show_default=True,
        help="Output format.",
    )


def assume_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--assume '[section] option=value'`` (repeatable): read nova.conf as if it said
    this too - "if I flip nova.conf now, which instances break?" without editing it."""

    def store(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
        if values:
            app = ctx.find_object(Application)
            assert app is not None
            try:
                app.assume = tuple(parse_assumption(v) for v in values)
            except errors.UsageError as exc:
                raise click.BadParameter(str(exc), ctx, param) from None

    return click.option(
        "--assume",
        multiple=True,
        metavar="'[SECTION] OPTION=VALUE'",
        expose_value=False,
        callback=store,
        help="Read nova.conf as if it also said this (repeatable), e.g. "
        "--assume '[libvirt] images_type=rbd': which instances would Nova then misread?",
    )(func)


@dataclass
class Application:
    connect: tuple[str, ...] = ()
    nova_conf: tuple[str, ...] = ()
    lock_path: str = DEFAULT_LOCK_PATH
    verbose: int = 0
    log_file: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: Builds the read-write libvirt port of a URI (None: the real one, with the connect
    #: timeout). Tests hand in their own: ``invoke(cli, args, obj=Application(
    #: libvirt_factory=lambda uri: FakeLibvirt(uri=uri)))`` - see ``cli()``.
    libvirt_factory: Callable[[str], LibvirtPort] | None = None
    #: ``--assume`` settings over nova.conf (``(section, option, value)``)
    assume: tuple[tuple[str, str, str], ...] = ()

    # -- settings ---------------------------------------------------------------
    @property
    def uris(self) -> list[str]:
        """The hosts to scan, each once (``-c A -c A`` scans A once)."""
        if self.connect:
            return list(dict.fromkeys(self.connect))
        return [os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI]

    def libvirt(self, uri: str) -> LibvirtPort:
        """The read-write libvirt port of ``uri`` (connects on first use)."""
        if self.libvirt_factory is not None:
            return self.libvirt_factory(uri)
        from storagectl.host.libvirt_port import LibvirtDomains

        return LibvirtDomains(uri, timeout=self.connect_timeout)

    # The services are made on first use, once (cached_property).
    @cached_property
    def runner(self) -> Runner:
        return Runner()

    def nova_files(self, assume: Sequence[tuple[str, str, str]] = ()) -> NovaConfig:
        """This host's nova.conf (``--nova-conf``, else the default), ``assume`` over it."""
        explicit = bool(self.nova_conf)
        paths = list(self.nova_conf) or [DEFAULT_NOVA_CONF]
        return load_nova_config(paths, explicit=explicit, assume=assume)

    @cached_property
    def nova(self) -> NovaConfig:
        nova = self.nova_files(self.assume)
        if not nova.files:
            LOG.warning("%s not found: using Nova's defaults", DEFAULT_NOVA_CONF)
        # Its instances are read here only for a host of this machine; a remote
        # host's instances_path need not exist locally.
        from storagectl.host.hosts import is_local_uri

        if any(is_local_uri(uri) for uri in self.uris):
            check_instances_path(nova)
        return nova

    # -- output -----------------------------------------------------------------
    # rich is imported only when something is drawn with it: `inspect -o json` from cron
    # or a script never pays for it (~60 ms of a whole run).
    @cached_property
    def console(self) -> Console:
        return _console()

    @cached_property
    def err(self) -> Console:
        return _console(stderr=True)

    @property
    def interactive(self) -> bool:
        """Whether stdout is a terminal (what rich would decide, without importing rich)."""
        if "console" in self.__dict__:  # made already (cached_property)
            return self.console.is_terminal
        try:
            return sys.stdout.isatty()
        except (AttributeError, ValueError):  # replaced or closed stdout
            return False

    def print_data(self, data: Any, fmt: str) -> None:
        """Machine-readable output: stable keys, no colour, no wrapping."""
        if fmt == "json":
            # Indented for a person at a terminal; compact (and C-encoded, ~10x faster on
            # thousands of disks) when piped to a program.
            indent = 2 if self.interactive else None
            click.echo(json.dumps(data, indent=indent, sort_keys=False))
        else:
            import yaml

            click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), nl=False)

    def info(self, message: str) -> None:
        # click.echo, not rich: messages naming long paths must never be wrapped.
        click.echo(message, err=True)

    def report_scan_problems(self, result: Any) -> int:
        """Name every host that could not be scanned and every INSTANCE not found on
        stderr; 1 if there was any, else 0 (inspect's and persist's exit status)."""
        status = 0
        for host in result.failed_hosts:
            self.info(error_line(f"HostUnreachable: {host.uri}: {host.error}"))
            status = 1
        for missing in result.not_found:
            where = ", ".join(self.uris)
            self.info(error_line(f"InstanceNotFound: no instance {missing} on {where}"))
            status = 1
        return status

    def abort(self, message: str, code: int = 1) -> NoReturn:
        print_error(message)
        raise click.exceptions.Exit(code)

    # -- logging ----------------------------------------------------------------
    def setup_logging(self) -> None:
        root = logging.getLogger()
        root.setLevel(logging.DEBUG)
        # One process may run several commands (tests): replace our handlers, never stack.
        for old in [h for h in root.handlers if getattr(h, "_storagectl", False)]:
            root.removeHandler(old)
            old.close()
        console_level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(self.verbose, 2)]
        stream = logging.StreamHandler()
        stream.setLevel(console_level)
        stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        stream._storagectl = True  # type: ignore[attr-defined]
        root.addHandler(stream)
        path = self.log_file or DEFAULT_LOG_FILE
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            handler = _LogFileHandler(path)
        except OSError:
            if self.log_file:  # asked for explicitly: tell the operator
                raise errors.UsageError(reason=f"cannot write log file {path}") from None
            return
        handler.setLevel(logging.DEBUG)
        handler._storagectl = True  # type: ignore[attr-defined]
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(handler)
        self.log_file = path


SIGPIPE_STATUS = 141  # 128 + SIGPIPE: what a C tool killed by the signal reports


def exit_on_broken_pipe() -> NoReturn:
    """The reader of our output went away (``storagectl inspect | head -1``): stop
    quietly with status 141. stdout is pointed at /dev/null so the interpreter's last
    flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a real file (a test's capture): nothing will flush to it later
    LOG.debug("stdout closed by its reader: stopping")
    raise SystemExit(SIGPIPE_STATUS)


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:  # rich's own exits 1
            exit_on_broken_pipe()

    return _Console(stderr=stderr)


class _LogFileHandler(logging.FileHandler):
    """The log file; a record it cannot write (disk full, I/O error) is told once, in one
    line on stderr, and the handler then stops: logging's default prints a traceback to
    stderr for every record."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        exc = sys.exc_info()[1]
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split()) or "error"
        logging.getLogger().removeHandler(self)
        try:
            sys.stderr.write(
                error_line(
                    f"LogFileError: cannot write log file {self.baseFilename}: {reason}; "
                    "logging to it stopped"
                )
                + "\n"
            )
        except (OSError, ValueError):
            pass
        stream, self.stream = self.stream, None
        try:
            if stream is not None:
                stream.close()  # flushes (and fails) once more, but closes the file
        except (OSError, ValueError):
            pass
