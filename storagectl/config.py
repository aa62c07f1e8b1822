"""Reading nova.conf the way oslo.config does, for the options storagectl needs.

Several files may be given; later files override earlier ones (``--config-file``
semantics). ``$option`` / ``${option}`` references are substituted from the same
section or ``[DEFAULT]``, as oslo.config does for ``instances_path =
$state_path/instances``. Where a value is absent, Nova's own default applies.

Only the options below are read; everything else in nova.conf is ignored.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from storagectl import errors

DEFAULT_NOVA_CONF = "/etc/nova/nova.conf"

# Nova's defaults (nova/conf/compute.py, nova/conf/libvirt.py, nova/conf/imagecache.py).
_DEFAULTS: dict[tuple[str, str], str] = {
    ("DEFAULT", "state_path"): "/var/lib/nova",
    ("DEFAULT", "instances_path"): "$state_path/instances",
    ("DEFAULT", "use_cow_images"): "true",
    ("DEFAULT", "force_raw_images"): "true",
    ("libvirt", "images_type"): "default",
    ("libvirt", "images_volume_group"): "",
    ("libvirt", "images_rbd_pool"): "rbd",
    ("libvirt", "images_rbd_ceph_conf"): "",
    ("libvirt", "rbd_user"): "",
    ("libvirt", "rbd_secret_uuid"): "",
    ("libvirt", "sparse_logical_volumes"): "false",
    ("image_cache", "subdirectory_name"): "_base",
}

_IMAGES_TYPES = ("raw", "flat", "qcow2", "lvm", "rbd", "ploop", "default")
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}
_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


@dataclass(frozen=True)
class NovaConfig:
    """The settings of one compute host that shape its instances' storage."""

    files: tuple[str, ...]
    state_path: str
    instances_path: str
    use_cow_images: bool
    force_raw_images: bool
    images_type: str
    images_volume_group: str | None
    images_rbd_pool: str
    images_rbd_ceph_conf: str
    rbd_user: str | None
    sparse_logical_volumes: bool
    image_cache_subdirectory: str
    #: The libvirt secret holding ``rbd_user``'s key: Nova puts it in every rbd disk's
    #: ``<auth>``; migrate does too when nothing more specific names one.
    rbd_secret_uuid: str | None = None

    @property
    def image_cache_path(self) -> str:
        return os.path.join(self.instances_path, self.image_cache_subdirectory)

    @property
    def effective_images_type(self) -> str:
        """What ``images_type=default`` means on this host (Nova: qcow2 or flat)."""
        if self.images_type == "default":
            return "qcow2" if self.use_cow_images else "flat"
        if self.images_type == "raw":  # deprecated alias
            return "flat"
        return self.images_type

    def instance_dir(self, uuid: str) -> str:
        return os.path.join(self.instances_path, uuid)


def load_nova_config(
    paths: Sequence[str | os.PathLike[str]] = (), *, explicit: bool = True
) -> NovaConfig:
    """Read nova.conf files (later override earlier) into a :class:`NovaConfig`.

    ``explicit=False`` means the paths are only the built-in default: a missing file then
    yields Nova's defaults instead of an error.
    """
    parser = configparser.RawConfigParser(strict=False, interpolation=None, default_section="\0")
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep option case
    used: list[str] = []
    for raw in paths:
        path = os.fspath(raw)
        if not os.path.exists(path):
            if explicit:
                raise errors.ConfigError(path=path, reason="no such file")
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle, source=path)
        except (OSError, UnicodeDecodeError, configparser.Error) as exc:
            raise errors.ConfigError(path=path, reason=_one_line(exc)) from exc
        used.append(path)

    def raw_value(section: str, option: str) -> str:
        if parser.has_section(section) and parser.has_option(section, option):
            return parser.get(section, option).strip()
        return _DEFAULTS[(section, option)]

    def value(section: str, option: str, depth: int = 0) -> str:
        text = raw_value(section, option)
        if depth > 10:
            raise errors.ConfigError(
                path=", ".join(used) or "nova.conf",
                reason=f"recursive substitution in {section}/{option}",
            )

        def sub(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            for sec in (section, "DEFAULT"):
                if (sec, name) in _DEFAULTS or (
                    parser.has_section(sec) and parser.has_option(sec, name)
                ):
                    return value(sec, name, depth + 1)
            return match.group(0)

        return _VAR.sub(sub, text)

    def boolean(section: str, option: str) -> bool:
        text = value(section, option).lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise errors.ConfigError(
            path=", ".join(used) or "nova.conf",
            reason=f"[{section}] {option} = {text!r} is not a boolean",
        )

    images_type = value("libvirt", "images_type").lower()
    if images_type not in _IMAGES_TYPES:
        raise errors.ConfigError(
            path=", ".join(used) or "nova.conf",
            reason=f"[libvirt] images_type = {images_type!r} is not one of "
            + ", ".join(_IMAGES_TYPES),
        )
    # Older Nova spelled the cache directory [DEFAULT] image_cache_subdirectory_name.
    cache_dir = value("image_cache", "subdirectory_name")
    new_spelling = parser.has_section("image_cache") and parser.has_option(
        "image_cache", "subdirectory_name"
    )
    old_spelling = parser.has_section("DEFAULT") and parser.has_option(
        "DEFAULT", "image_cache_subdirectory_name"
    )
    if old_spelling and not new_spelling:
        cache_dir = parser.get("DEFAULT", "image_cache_subdirectory_name").strip()

    return NovaConfig(
        files=tuple(used),
        state_path=value("DEFAULT", "state_path"),
        instances_path=os.path.normpath(value("DEFAULT", "instances_path")),
        use_cow_images=boolean("DEFAULT", "use_cow_images"),
        force_raw_images=boolean("DEFAULT", "force_raw_images"),
        images_type=images_type,
        images_volume_group=value("libvirt", "images_volume_group") or None,
        images_rbd_pool=value("libvirt", "images_rbd_pool") or "rbd",
        images_rbd_ceph_conf=value("libvirt", "images_rbd_ceph_conf") or "/etc/ceph/ceph.conf",
        rbd_user=value("libvirt", "rbd_user") or None,
        sparse_logical_volumes=boolean("libvirt", "sparse_logical_volumes"),
        image_cache_subdirectory=cache_dir,
        rbd_secret_uuid=value("libvirt", "rbd_secret_uuid") or None,
    )


def default_paths() -> list[str]:
    return [DEFAULT_NOVA_CONF]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
