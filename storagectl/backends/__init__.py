"""One module per storage backend, behind a name -> class registry.

``get_backend_class("lvm")`` returns the class; construct it with a
:class:`storagectl.process.Runner` and the backend's settings (nothing runs in a
constructor).
"""

from __future__ import annotations

import importlib

_MODULES = {
    "lvm": ("storagectl.backends.lvm", "LVM"),
    "rbd": ("storagectl.backends.rbd", "RBD"),
}


def get_backend_class(name: str) -> type:
    try:
        module, cls = _MODULES[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(sorted(_MODULES))}") from None
    return getattr(importlib.import_module(module), cls)
