"""Read the storage records in a forked child, while the parent scans libvirt.

Reading and strictly validating 1,000 ``storage.yaml`` costs ~0.4 s of CPU; scanning
libvirt and parsing 1,000 domain XMLs costs more, in the parent. Threads cannot run the
two side by side (the GIL), a second process can: :class:`RecordPrefetch` forks before
the scan starts (no thread exists yet); as the scan meets each domain, the parent sends
its uuid down a pipe, and the child reads that instance's record with the caller's own
reader (the function the parent would otherwise call itself). When the scan is done
the parent closes the pipe and takes the results, pickled. Only the records of domains
libvirt defines are read - not every directory under a shared ``instances_path``.

The child is an optimisation and nothing else: a record it did not read (any failure of
the child: it died, its output did not unpickle) is read by the parent as before, and
the results are the same either way. The child never writes anything, logs through the
parent's handlers (appending) and leaves with ``os._exit``.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
from collections.abc import Callable
from typing import IO, Any

from storagectl import errors
from storagectl.model import naming
from storagectl.record.record import Record

LOG = logging.getLogger(__name__)

Result = Record | errors.StorageCtlError | None


class RecordPrefetch:
    """``with RecordPrefetch(read) as pre: ...pre.want(uuid)...; records = pre.results()``,
    ``read(uuid)`` giving an instance's record, None, or the error (never raising it)."""

    def __init__(self, read: Callable[[str], Result]) -> None:
        self.read = read
        self.pid = 0
        self.results_fd = -1
        self.uuids: IO[bytes] | None = None

    def __enter__(self) -> RecordPrefetch:
        fds: list[int] = []
        try:
            fds += os.pipe()  # uuids: parent -> child
            fds += os.pipe()  # results: child -> parent
            pid = os.fork()
        except OSError as exc:
            LOG.debug("record prefetch not started: %s", exc)
            for fd in fds:
                os.close(fd)
            return self
        uuid_r, uuid_w, res_r, res_w = fds
        if pid == 0:  # the child: never returns
            os.close(uuid_w)
            os.close(res_r)
            _child(self.read, uuid_r, res_w)
        os.close(uuid_r)
        os.close(res_w)
        self.pid, self.results_fd = pid, res_r
        self.uuids = os.fdopen(uuid_w, "wb", buffering=8192)
        return self

    def want(self, uuid: str) -> None:
        """Ask for one instance's record (buffered: sent ~200 at a time)."""
        if self.uuids is None:
            return
        try:
            self.uuids.write(uuid.encode("ascii") + b"\n")
        except (OSError, UnicodeEncodeError, ValueError) as exc:
            LOG.debug("record prefetch: cannot send %r: %s", uuid, exc)
            self._close_uuids()

    def results(self) -> dict[str, Result]:
        """What the child read (uuid -> record, None or the error), or {} if it failed."""
        if not self.pid:
            return {}
        self._close_uuids()  # end of the list: the child answers
        chunks = []
        try:
            while chunk := os.read(self.results_fd, 1 << 20):
                chunks.append(chunk)
        except OSError as exc:
            LOG.debug("record prefetch: cannot read the child's results: %s", exc)
            chunks = []
        status = self._reap()
        if status != 0 or not chunks:
            LOG.debug("record prefetch child ended with status %s: records read here", status)
            return {}
        try:
            data = pickle.loads(b"".join(chunks))
        except Exception:  # noqa: BLE001 - any failure: the parent reads them itself
            LOG.debug("record prefetch: results do not unpickle", exc_info=True)
            return {}
        return data if isinstance(data, dict) else {}

    def __exit__(self, *exc: object) -> None:
        if self.pid:  # results() not called (the scan failed): stop the child
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap()

    def _close_uuids(self) -> None:
        uuids, self.uuids = self.uuids, None
        if uuids is not None:
            try:
                uuids.close()  # flushes what is buffered
            except OSError as exc:  # the child is gone: results() finds out
                LOG.debug("record prefetch: %s", exc)

    def _reap(self) -> int | None:
        pid, self.pid = self.pid, 0
        self._close_uuids()
        if self.results_fd >= 0:
            os.close(self.results_fd)
            self.results_fd = -1
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return None
        return os.waitstatus_to_exitcode(status)


def _child(read: Callable[[str], Result], uuid_fd: int, results_fd: int) -> None:
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        out: dict[str, Any] = {}
        with os.fdopen(uuid_fd, "rb") as uuids:
            for line in uuids:
                uuid = line.decode("ascii").strip()
                if uuid not in out and naming.is_uuid(uuid):
                    out[uuid] = read(uuid)
        data = memoryview(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
        while data:
            data = data[os.write(results_fd, data) :]
        code = 0
    except BaseException:  # noqa: BLE001 - the parent reads the records itself
        LOG.debug("record prefetch child failed", exc_info=True)
    finally:
        os._exit(code)
