"""An instance named on the command line: by its uuid, or by its domain's name.

Written once for the commands that take one instance: :func:`instance_uuid` takes a uuid
as it is and asks a lookup for a name, be it one libvirt port (``migrate``) or every
``--connect`` host (:func:`uuid_by_name`, ``show``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from storagectl import errors
from storagectl.host.hosts import scan_hosts
from storagectl.model.naming import is_uuid


class NoSuchInstance(errors.InstanceNotFound):
    template = "no such instance %(instance)s: %(why)s"


class AmbiguousInstance(errors.StorageCtlError):
    template = "%(instance)s names more than one instance: %(matches)s; give the uuid"


def instance_uuid(instance: str, by_name: Callable[[str], str]) -> str:
    """The uuid ``instance`` names: itself (lower-cased) if it is a uuid, else
    ``by_name(instance)``, the uuid of the domain of that name."""
    return instance.lower() if is_uuid(instance) else by_name(instance)


def uuid_by_name(name: str, uris: Sequence[str]) -> str:
    """The uuid of the domain named ``name``: exactly one across the hosts ``uris``."""
    matches, unreachable = [], []
    for scan in scan_hosts(uris):
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
    why = f"no domain of that name on {', '.join(uris)}"
    if unreachable:
        why += f" (not scanned: {', '.join(unreachable)})"
    raise NoSuchInstance(instance=name, why=why)
