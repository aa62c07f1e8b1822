"""The one command layer: every external command storagectl runs goes through here.

It wraps ``oslo_concurrency.processutils.execute`` so that each command line is
logged (secrets masked) with its exit status and duration, has a timeout, and
fails with a storagectl error naming the command. The executor is injected:
production uses processutils, unit tests pass a fake callable with the same
signature that returns canned ``(stdout, stderr)`` captured from the real tools.

Example::

    runner = Runner()
    out = runner.run("qemu-img", "info", "-f", "qcow2", "--output=json", path).stdout
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from storagectl import errors

# oslo_concurrency.processutils (and the oslo_utils it pulls in) costs a few hundred
# milliseconds to import; inspect of a file-only host runs no command at all, so the
# import happens on the first command, not at start-up.

LOG = logging.getLogger(__name__)

#: A callable with processutils.execute's signature (the subset we use).
Executor = Callable[..., tuple[Any, Any]]

DEFAULT_TIMEOUT = 600

# Arguments whose *next* argument is a secret (rbd --key, ceph --key ...).
_SECRET_FLAGS = frozenset({"--key", "--password", "--secret"})
# Fragments of rbd: URIs and key=value options that carry secrets.
_SECRET_KEYS = ("key=", "password=", "secret=")


def mask_argv(argv: Sequence[str]) -> list[str]:
    """Return ``argv`` with secrets replaced by ``***`` for logging.

    >>> mask_argv(["rbd", "--key", "AQBs", "ls"])
    ['rbd', '--key', '***', 'ls']
    >>> mask_argv(["qemu-img", "info", "rbd:vms/a:id=admin:key=AQBs"])
    ['qemu-img', 'info', 'rbd:vms/a:id=admin:key=***']
    """
    masked: list[str] = []
    hide_next = False
    for arg in argv:
        arg = str(arg)
        if hide_next:
            masked.append("***")
            hide_next = False
            continue
        if arg in _SECRET_FLAGS:
            hide_next = True
            masked.append(arg)
            continue
        if any(k in arg for k in _SECRET_KEYS):
            parts = []
            for part in arg.split(":"):
                for k in _SECRET_KEYS:
                    if part.startswith(k):
                        part = k + "***"
                parts.append(part)
            arg = ":".join(parts)
        masked.append(_strutils().mask_password(arg))
    return masked


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    stdout: Any
    stderr: Any
    exit_code: int
    duration: float = field(default=0.0, compare=False)


class Runner:
    """Runs external commands through an injectable executor.

    ``run`` is the "call and parse" door: it captures output and raises
    :class:`storagectl.errors.CommandFailed` on an unexpected exit status.
    """

    def __init__(
        self,
        execute: Executor | None = None,
        *,
        default_timeout: int = DEFAULT_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> None:
        self._injected = execute
        self.default_timeout = default_timeout
        self.env = dict(env or {})

    @property
    def is_real(self) -> bool:
        return self._injected is None

    @property
    def _execute(self) -> Executor:
        return self._injected or _processutils().execute

    def run(
        self,
        *argv: str,
        ok_codes: Iterable[int] = (0,),
        timeout: int | None = None,
        input: str | bytes | None = None,
        env: dict[str, str] | None = None,
        binary: bool = False,
        cwd: str | None = None,
    ) -> CommandResult:
        argv_t = tuple(str(a) for a in argv)
        ok = tuple(ok_codes)
        shown = " ".join(mask_argv(argv_t))
        if self.is_real and shutil.which(argv_t[0]) is None and not os.path.isabs(argv_t[0]):
            raise errors.CommandNotFound(command=argv_t[0])
        # processutils hands env_variables to Popen as the WHOLE environment: extra
        # variables are added to ours, never substituted for it (PATH must survive).
        extra = {**self.env, **(env or {})}
        merged_env = {**os.environ, **extra} if extra else None
        started = time.monotonic()
        started_procs: list[Any] = []
        finished: list[Any] = []
        try:
            stdout, stderr = self._execute(
                *argv_t,
                check_exit_code=list(ok),
                process_input=input,
                env_variables=merged_env,
                timeout=timeout or self.default_timeout,
                binary=binary,
                cwd=cwd,
                loglevel=logging.DEBUG,
                on_execute=started_procs.append,
                on_completion=finished.append,
            )
            # processutils does not return the status of an accepted non-zero exit.
            code = getattr(finished[0], "returncode", 0) if finished else 0
        except _processutils().ProcessExecutionError as exc:
            elapsed = time.monotonic() - started
            code = exc.exit_code if exc.exit_code is not None else -1
            stderr_text = _text(exc.stderr).strip() or _text(exc.stdout).strip()
            LOG.info("command failed: %s -> exit %s (%.3fs)", shown, code, elapsed)
            LOG.debug("stderr of %s: %s", shown, stderr_text)
            raise errors.CommandFailed(
                command=shown.split(" ", 1)[0] if len(shown) > 200 else shown,
                argv=mask_argv(argv_t),
                exit_code_=code,
                stderr=_last_line(stderr_text) or "(no output)",
                full_stderr=stderr_text,
            ) from exc
        except OSError as exc:
            # Popen could not start the program at all.
            raise errors.CommandNotFound(command=argv_t[0]) from exc
        except Exception as exc:  # subprocess.TimeoutExpired and friends
            if exc.__class__.__name__ == "TimeoutExpired":
                # processutils re-raises without killing the child: do it, or a hung
                # rbd/qemu-img would outlive us holding locks and images open.
                for proc in started_procs:
                    _kill(proc)
                LOG.info("command timed out: %s after %ss", shown, timeout or self.default_timeout)
                raise errors.CommandTimeout(
                    command=shown, timeout=timeout or self.default_timeout
                ) from exc
            raise
        elapsed = time.monotonic() - started
        LOG.debug("ran: %s -> exit %s (%.3fs)", shown, code, elapsed)
        return CommandResult(argv_t, stdout, stderr, code, elapsed)

    def stream(
        self,
        *argv: str,
        on_line: Callable[[str], None],
        timeout: int | None = None,
        ok_codes: Iterable[int] = (0,),
    ) -> CommandResult:
        """The "run and stream" door: ``on_line`` gets each line of stdout as it comes
        (lines end in ``\n`` or ``\r``, as qemu-img ``-p`` progress does).

        The child is killed if storagectl dies (SIGKILL included) while it runs: a copy
        must not go on writing behind the back of the --resume or --rollback that
        follows (see :func:`_die_with_parent`).

        processutils.execute has no streaming mode, so this door uses subprocess
        directly, with the same logging, masking, timeout and error types as :meth:`run`.
        An injected executor (unit tests) is called like ``run`` and its stdout replayed.
        """
        argv_t = tuple(str(a) for a in argv)
        shown = " ".join(mask_argv(argv_t))
        if not self.is_real:
            result = self.run(*argv_t, ok_codes=ok_codes, timeout=timeout)
            for line in _LINE_SPLIT.split(_text(result.stdout)):
                if line.strip():
                    on_line(line)
            return result
        if shutil.which(argv_t[0]) is None and not os.path.isabs(argv_t[0]):
            raise errors.CommandNotFound(command=argv_t[0])
        limit = timeout or self.default_timeout
        started = time.monotonic()
        env = {**os.environ, **self.env} if self.env else None
        try:
            proc = subprocess.Popen(
                argv_t,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent(),
            )
        except OSError as exc:
            raise errors.CommandNotFound(command=argv_t[0]) from exc
        stderr_chunks: list[bytes] = []
        drain = threading.Thread(
            target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True
        )
        drain.start()
        timer = threading.Timer(limit, proc.kill)
        timer.start()
        try:
            buf = b""
            while chunk := proc.stdout.read1(65536) if proc.stdout else b"":
                buf += chunk
                *lines, buf = _LINE_SPLIT_B.split(buf)
                for raw in lines:
                    if raw.strip():
                        on_line(raw.decode("utf-8", "replace"))
            if buf.strip():
                on_line(buf.decode("utf-8", "replace"))
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                _kill(proc)
            drain.join(5)
        elapsed = time.monotonic() - started
        stderr_text = b"".join(stderr_chunks).decode("utf-8", "replace").strip()
        if elapsed >= limit and code < 0:
            LOG.info("command timed out: %s after %ss", shown, limit)
            raise errors.CommandTimeout(command=shown, timeout=limit)
        LOG.debug("ran: %s -> exit %s (%.3fs)", shown, code, elapsed)
        if code not in tuple(ok_codes):
            raise errors.CommandFailed(
                command=shown,
                argv=mask_argv(argv_t),
                exit_code_=code,
                stderr=_last_line(stderr_text) or "(no output)",
                full_stderr=stderr_text,
            )
        return CommandResult(argv_t, "", stderr_text, code, elapsed)


_LINE_SPLIT = re.compile(r"[\r\n]+")
_LINE_SPLIT_B = re.compile(rb"[\r\n]+")


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies.

    ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the signal fires when the *thread* that
    started the child ends, which for :meth:`Runner.stream` is after the child (the
    thread waits for it). It survives ``exec`` of an ordinary (not set-uid) program.
    If the parent died between fork and prctl, the child kills itself at once.
    processutils runs every command with a ``preexec_fn`` too (its signal reset);
    this one only calls one libc function, resolved before the fork. ``None`` where
    there is no prctl (not Linux).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # no libc prctl here
        return None


def _processutils() -> Any:
    from oslo_concurrency import processutils

    return processutils


def _strutils() -> Any:
    from oslo_utils import strutils

    return strutils


def _kill(proc: Any) -> None:
    try:
        proc.kill()
        proc.wait(timeout=5)
    except Exception:  # noqa: BLE001 - already gone, or unkillable: nothing more to do
        LOG.debug("could not reap timed-out child %s", getattr(proc, "pid", "?"))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
