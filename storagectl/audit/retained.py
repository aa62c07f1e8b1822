"""The space the retained sources of finished migrations hold (audit's JSON summary).

A migration keeps each disk's old copy unless told otherwise and lists it in the record's
``retained_sources`` until ``migrate --delete-retained``. The audit says how much they
hold, per instance (``summary.retained_sources`` of ``audit -o json``)::

    "retained_sources": {"<uuid>": {"sources": 2, "bytes": 1073741824, "unsized": 0}}

A file (or a ploop directory) is sized by its allocated blocks, as ``du`` does; an LV or
RBD image is counted in ``unsized``, not sized (that would cost an lvs or rbd call per
item). The record is hostile input: an item that is no place of its own instance
(:func:`storagectl.migrate.retained.retained_location`) is counted unsized, never stat'ed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from storagectl import errors
from storagectl.audit.interrupted import allocated


def retained_held(
    retained: Mapping[str, Sequence[dict[str, Any]]], instances_path: str
) -> dict[str, dict[str, int]]:
    """uuid -> ``{"sources", "bytes", "unsized"}`` for every instance with retained items."""
    from storagectl.migrate.retained import retained_location  # migrate imports audit

    out: dict[str, dict[str, int]] = {}
    for uuid, items in sorted(retained.items()):
        if not items:
            continue
        held = {"sources": len(items), "bytes": 0, "unsized": 0}
        instance_dir = os.path.join(instances_path, uuid)
        for item in items:
            try:
                path = retained_location(item, uuid, instance_dir).disk_fields().get("path")
            except errors.StorageCtlError:
                path = None
            size = _file_bytes(path) if isinstance(path, str) else None
            if size is None:
                held["unsized"] += 1
            else:
                held["bytes"] += size
        out[uuid] = held
    return out


def _file_bytes(path: str) -> int | None:
    """Allocated bytes of a regular file or directory; None for anything else (an LV's
    /dev symlink, a device, nothing there)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return allocated(path)
    return None
