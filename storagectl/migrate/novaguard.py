"""migrate refuses to strand an instance: the Nova view of a migration's result.

Nova rebuilds every disk's path and format from the host's nova.conf at the next hard
reboot, rescue, resize or evacuate (``storagectl.inspect.nova``). A move that leaves the
instance stored otherwise than that nova.conf makes Nova open it is undone at the next
hard reboot - a missing disk, a blank one, a raw disk read as qcow2. So the plan of
``migrate --to X`` is checked against the nova.conf the host has, or the one the
operator says it will have when the move is done (``--assume`` / ``--nova-conf-after``),
and refused with the way out when Nova would misread the result.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from storagectl.backends import registry
from storagectl.host.config import NovaConfig
from storagectl.inspect.nova import nova_view, place, setting
from storagectl.inspect.storage import StorageView
from storagectl.inspect.verify import DISK_INFO_MAX, UntrustedFileError, read_untrusted
from storagectl.migrate.plan import Plan
from storagectl.migrate.switch import disk_info_after, migrated_record
from storagectl.model.layout import HOSTILE_CONTENT_ERRORS
from storagectl.record.record import Record


@dataclass
class NovaOutcome:
    """How Nova reads the instance once the plan is carried out."""

    #: how the nova.conf it was judged by is named (the host's, or the one assumed)
    config: str
    #: one sentence per disk Nova would still misread (empty: it reads the result as stored)
    misread: list[str] = field(default_factory=list)
    #: the nova.conf settings that make Nova read the moved disks as stored
    settings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "misread": list(self.misread),
            "settings": list(self.settings),
        }


def describe_config(nova: NovaConfig, *, assumed: bool) -> str:
    if not assumed:
        return f"this host's nova.conf ({setting(nova)})"
    named = "; ".join(nova.files) or "Nova's defaults"
    if nova.assumed:
        return f"the nova.conf to be ({named} with {', '.join(nova.assumed)})"
    return f"the nova.conf to be ({named}: {setting(nova)})"


def outcome(
    plan: Plan, record: Record, nova: NovaConfig, view: StorageView, *, assumed: bool
) -> NovaOutcome:
    """The Nova view, under ``nova``, of ``record`` once ``plan`` is carried out (disk.info
    as the switch leaves it, the targets existing)."""
    result = migrated_record(record, plan, now="")
    info = _disk_info(plan, view)
    made = frozenset(place(m.dest) for m in plan.moves)
    out = NovaOutcome(describe_config(nova, assumed=assumed))
    for disk in result.disks:
        _, why = nova_view(disk, record.uuid, nova, view, info, made)
        if why:
            out.misread.append(why)
    settings: dict[tuple[str, str], str] = {}
    for m in plan.moves:
        for section, option, value in registry.backend_class(m.dest.backend).nova_conf_for(m.dest):
            settings.setdefault((section, option), value)
    out.settings = [f"[{s}] {o}={v}" for (s, o), v in settings.items()]
    return out


def refusal(plan: Plan, found: NovaOutcome, *, assumed: bool) -> str:
    """Why the move is refused, and the two ways out."""
    more = f" (and {len(found.misread) - 1} more disk(s))" if len(found.misread) > 1 else ""
    assume = " ".join(f"--assume '{s}'" for s in found.settings)
    if assumed:
        return (
            f"after the move Nova, with {found.config}, would still misread it: "
            f"{found.misread[0]}{more}"
        )
    return (
        f"after the move Nova would misread it: {found.misread[0]}{more}. Nova rebuilds "
        "every disk from nova.conf at the next hard reboot, so convert the host instead: "
        f"name the nova.conf it will have when every instance is moved ({assume}, or "
        "--nova-conf-after PATH), move them all, then set it (storagectl audit with the "
        "same --assume lists the instances still to move)"
    )


def _disk_info(plan: Plan, view: StorageView) -> dict[str, str] | None:
    """disk.info as the switch will leave it (``switch.disk_info_after``)."""
    path = os.path.join(plan.instance_dir, "disk.info")
    try:
        raw = read_untrusted(path, DISK_INFO_MAX)
    except UntrustedFileError:
        raw = None
    try:  # hostile input (the instance directory is Nova's): never a traceback
        text = disk_info_after(
            raw.decode("utf-8", "replace") if raw is not None else None, plan.moves
        )
        data = json.loads(text) if text else None
    except HOSTILE_CONTENT_ERRORS:
        return None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        return None  # audit reports a disk.info that is not Nova's; Nova would probe
    return data
