"""One error family for storagectl.

Every error is a message template with structured fields (as os-brick does), so
callers and tests can tell failures apart by class and by field, and the operator
sees one sentence naming the host, instance, disk or file concerned::

    >>> str(RecordInvalid(path="/var/lib/nova/instances/u/storage.yaml", reason="bad"))
    'invalid storage record /var/lib/nova/instances/u/storage.yaml: bad'

The CLI's top-level renderer (``storagectl.cli``) prints ``--> ClassName: message``
and exits with ``exit_code``; the traceback goes to the debug log only.
"""

from __future__ import annotations

from typing import Any


class StorageCtlError(Exception):
    """Base class. Subclasses set ``template`` and, if needed, ``exit_code``."""

    template = "an unexpected error occurred"
    exit_code = 1

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        try:
            message = self.template % fields
        except (KeyError, TypeError, ValueError):
            # A template/field mismatch is a programming error, but it must
            # never hide the original problem from the operator.
            message = f"{self.template} {fields!r}"
        super().__init__(message)

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(name)

    @property
    def message(self) -> str:
        return str(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its fields (the default would call cls(message)), and its message
        # kept as it was, even if the fields alone would not make it again.
        return (_rebuild, (type(self), self.fields, self.args))


def _rebuild(cls: type[StorageCtlError], fields: dict[str, Any], args: tuple[Any, ...]) -> Any:
    exc = cls.__new__(cls)
    exc.fields = fields
    exc.args = args
    return exc


class UsageError(StorageCtlError):
    template = "%(reason)s"
    exit_code = 2


class ConfigError(StorageCtlError):
    template = "cannot read configuration %(path)s: %(reason)s"


class CommandNotFound(StorageCtlError):
    template = "command %(command)s is not installed (looked up in PATH)"


class CommandFailed(StorageCtlError):
    template = "%(command)s exited with status %(exit_code_)s: %(stderr)s"


class CommandTimeout(StorageCtlError):
    template = "%(command)s did not finish within %(timeout)s s and was killed"


class HostUnreachable(StorageCtlError):
    template = "cannot connect to %(uri)s: %(reason)s"


class InstanceNotFound(StorageCtlError):
    template = "no instance %(instance)s on %(hosts)s"


class DiskNotFound(StorageCtlError):
    template = "instance %(instance)s has no disk %(disk)s"


class ImageInspectionError(StorageCtlError):
    template = "cannot inspect %(path)s: %(reason)s"


class RecordInvalid(StorageCtlError):
    template = "invalid storage record %(path)s: %(reason)s"


class LockBusy(StorageCtlError):
    template = "%(what)s is locked by another storagectl process (lock %(path)s)"
    exit_code = 3


class VolumeGroupNotFound(StorageCtlError):
    template = "volume group %(vg_name)s not found"


class CephUnreachable(StorageCtlError):
    template = "Ceph cluster not reachable with %(conf)s as %(user)s: %(reason)s"


class BackendError(StorageCtlError):
    template = "%(backend)s backend: %(reason)s"
