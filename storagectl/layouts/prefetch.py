"""Read every storage record of the host in a forked child, while the parent scans libvirt.

Reading and strictly validating 1,000 ``storage.yaml`` costs ~0.4 s of CPU; scanning
libvirt and parsing 1,000 domain XMLs costs more, in the parent. Threads cannot run the
two side by side (the GIL), a second process can: :class:`RecordPrefetch` forks before
the scan starts (no thread exists yet), the child reads the record of every instance
directory under ``instances_path`` with the very same :func:`read_record` and sends the
results back through a pipe, pickled; the parent takes them once its scan is done.

The child is an optimisation and nothing else: a record it did not read (an instance
directory created after it listed them, or any failure of the child: it died, its
output did not unpickle) is read by the parent as before, and the results are the same
either way. The child never writes anything, logs through the parent's handlers
(appending) and leaves with ``os._exit``.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
from typing import Any

from storagectl import errors
from storagectl.config import NovaConfig
from storagectl.layouts import naming
from storagectl.layouts.record import Record, read_record

LOG = logging.getLogger(__name__)

Result = Record | errors.StorageCtlError | None


class RecordPrefetch:
    """``with RecordPrefetch(nova) as pre: ...scan...; records = pre.results()``."""

    def __init__(self, nova: NovaConfig) -> None:
        self.nova = nova
        self.pid = 0
        self.fd = -1

    def __enter__(self) -> RecordPrefetch:
        try:
            read_fd, write_fd = os.pipe()
        except OSError as exc:
            LOG.debug("record prefetch not started: %s", exc)
            return self
        try:
            pid = os.fork()
        except OSError as exc:
            LOG.debug("record prefetch not started: %s", exc)
            os.close(read_fd)
            os.close(write_fd)
            return self
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            _child(self.nova, write_fd)
        os.close(write_fd)
        self.pid, self.fd = pid, read_fd
        return self

    def results(self) -> dict[str, Result]:
        """What the child read (uuid -> record, None or the error), or {} if it failed."""
        if not self.pid:
            return {}
        chunks = []
        try:
            while chunk := os.read(self.fd, 1 << 20):
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

    def _reap(self) -> int | None:
        pid, self.pid = self.pid, 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return None
        return os.waitstatus_to_exitcode(status)


def _child(nova: NovaConfig, fd: int) -> None:
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        out: dict[str, Any] = {}
        with os.scandir(nova.instances_path) as entries:
            names = [e.name for e in entries if naming.is_uuid(e.name) and e.name.islower()]
        for uuid in names:
            try:
                out[uuid] = read_record(nova.instance_dir(uuid), expect_uuid=uuid)
            except errors.StorageCtlError as exc:
                out[uuid] = exc
        data = memoryview(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
        while data:
            data = data[os.write(fd, data) :]
        code = 0
    except BaseException:  # noqa: BLE001 - the parent reads the records itself
        LOG.debug("record prefetch child failed", exc_info=True)
    finally:
        os._exit(code)
