"""Reading nova.conf the way oslo.config does, for the options storagectl needs.

Several files may be given; later files override earlier ones (``--config-file``
semantics). ``$option`` / ``${option}`` references are substituted from the same
section or ``[DEFAULT]``, as oslo.config does for ``instances_path =
$state_path/instances``. Where a value is absent, Nova's own default applies.

Only the options below are read; everything else in nova.conf is ignored.
"""

from __future__ import annotations

import configparser
import errno
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from storagectl import errors

DEFAULT_NOVA_CONF = "/etc/nova/nova.conf"

# Nova's defaults (nova/conf/compute.py, nova/conf/libvirt.py, nova/conf/imagecache.py),
# by nova.conf section.
_DEFAULTS: dict[str, dict[str, str]] = {
    "DEFAULT": {
        "state_path": "/var/lib/nova",
        "instances_path": "$state_path/instances",
        "use_cow_images": "true",
        "force_raw_images": "true",
    },
    "libvirt": {
        "images_type": "default",
        "images_volume_group": "",
        "images_rbd_pool": "rbd",
        "images_rbd_ceph_conf": "",
        "rbd_user": "",
        "rbd_secret_uuid": "",
        "sparse_logical_volumes": "false",
    },
    "image_cache": {
        "subdirectory_name": "_base",
    },
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
    #: ``--assume`` settings over the files, as ``[section] option=value``
    assumed: tuple[str, ...] = ()

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


#: What ``--assume`` may set: the options storagectl reads (and the old cache spelling).
ASSUMABLE = tuple((sec, opt) for sec, opts in _DEFAULTS.items() for opt in opts) + (
    ("DEFAULT", "image_cache_subdirectory_name"),
)
_ASSUMPTION = re.compile(r"^\s*(?:\[\s*(\w+)\s*\]\s*|(\w+)\s*/\s*)?(\w+)\s*=\s*(.*?)\s*$")


def parse_assumption(text: str) -> tuple[str, str, str]:
    """``--assume`` text -> ``(section, option, value)``.

    ``[libvirt] images_type=rbd``, ``libvirt/images_type=rbd`` or, where the option
    name is unambiguous, ``images_type=rbd``. Only the options storagectl reads are
    accepted: a misspelt one would otherwise change nothing, silently.
    """
    match = _ASSUMPTION.match(text)
    if not match:
        raise errors.UsageError(
            reason=f"{text!r}: expected '[section] option=value', e.g. '[libvirt] images_type=rbd'"
        )
    section, option, value = match.group(1) or match.group(2), match.group(3), match.group(4)
    known = [(sec, opt) for sec, opt in ASSUMABLE if opt == option and sec == (section or sec)]
    if len(known) != 1:
        names = ", ".join(f"[{sec}] {opt}" for sec, opt in ASSUMABLE)
        where = f"[{section}] {option}" if section else option
        raise errors.UsageError(
            reason=f"{text!r}: storagectl reads no nova.conf option {where}; it reads {names}"
        )
    return known[0][0], known[0][1], value


def load_nova_config(
    paths: Sequence[str | os.PathLike[str]] = (),
    *,
    explicit: bool = True,
    assume: Sequence[tuple[str, str, str]] = (),
) -> NovaConfig:
    """Read nova.conf files (later override earlier) into a :class:`NovaConfig`.

    ``explicit=False`` means the paths are only the built-in default: a missing file then
    yields Nova's defaults instead of an error. ``assume``: ``(section, option, value)``
    settings over the files (``--assume``: "if nova.conf said this").
    """
    parser = configparser.RawConfigParser(strict=False, interpolation=None, default_section="\0")
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep option case
    used: list[str] = []
    for raw in paths:
        path = os.fspath(raw)
        text = _read_text(path, explicit=explicit)
        if text is None:
            continue
        _parse(parser, path, text)
        used.append(path)
    for section, option, setting in assume:
        if not parser.has_section(section):
            parser.add_section(section)
        parser.set(section, option, setting)

    def raw_value(section: str, option: str) -> str:
        if parser.has_section(section) and parser.has_option(section, option):
            return parser.get(section, option).strip()
        return _DEFAULTS[section][option]

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
                if name in _DEFAULTS.get(sec, {}) or (
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

    instances_path = value("DEFAULT", "instances_path")
    if not instances_path:
        raise errors.ConfigError(
            path=", ".join(used) or "nova.conf",
            reason="[DEFAULT] instances_path is empty: it must be an absolute path",
        )
    if not os.path.isabs(instances_path):
        raise errors.ConfigError(
            path=", ".join(used) or "nova.conf",
            reason=f"[DEFAULT] instances_path = {instances_path!r} is not an absolute path",
        )

    return NovaConfig(
        files=tuple(used),
        state_path=value("DEFAULT", "state_path"),
        instances_path=os.path.normpath(instances_path),
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
        assumed=tuple(f"[{sec}] {opt}={val}" for sec, opt, val in assume),
    )


#: A nova.conf is a few hundred KiB at most; anything far bigger is not one.
_MAX_CONF_BYTES = 16 << 20


def _read_text(path: str, *, explicit: bool) -> str | None:
    """The text of one nova.conf, or None when an implicit default is absent. Every
    refusal is one sentence naming the file (and the line), no codec internals."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if explicit:
            raise errors.ConfigError(path=path, reason="no such file") from None
        return None
    except OSError as exc:  # permission denied, a component not a directory ...
        raise errors.ConfigError(path=path, reason=_strerror(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise errors.ConfigError(path=path, reason="is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise errors.ConfigError(path=path, reason="is not a regular file")
    if st.st_size > _MAX_CONF_BYTES:
        raise errors.ConfigError(
            path=path, reason=f"is {st.st_size} bytes, too big for a nova.conf"
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_CONF_BYTES + 1)
    except OSError as exc:
        raise errors.ConfigError(path=path, reason=_strerror(exc)) from None

    def line_of(offset: int) -> int:
        return data.count(b"\n", 0, offset) + 1

    nul = data.find(b"\0")
    if nul >= 0:
        raise errors.ConfigError(
            path=path, reason=f"line {line_of(nul)}: binary data (a NUL byte), not a nova.conf"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.ConfigError(
            path=path, reason=f"line {line_of(exc.start)}: not UTF-8 text"
        ) from None


def _parse(parser: configparser.RawConfigParser, path: str, text: str) -> None:
    try:
        parser.read_string(text, source=path)
    except configparser.MissingSectionHeaderError as exc:
        line = exc.line.strip()
        what = (
            "a malformed [section] header"
            if line.startswith("[")
            else "an option before the first [section] header"
        )
        raise errors.ConfigError(path=path, reason=f"line {exc.lineno}: {what}") from None
    except configparser.ParsingError as exc:
        lineno = exc.errors[0][0] if exc.errors else "?"
        raise errors.ConfigError(
            path=path,
            reason=f"line {lineno}: not a [section] header, an option (name = value) or a comment",
        ) from None
    except configparser.Error as exc:
        lineno = getattr(exc, "lineno", None)
        where = f"line {lineno}: " if lineno else ""
        raise errors.ConfigError(
            path=path, reason=f"{where}{type(exc).__name__.removesuffix('Error').lower()}"
        ) from None


def check_instances_path(nova: NovaConfig) -> None:
    """Refuse an ``instances_path`` this host cannot read: missing, not a directory, or
    not listable (permission denied is said as such). Without it every disk would be
    "outside the instance directory" and every instance an ``unknown-layout``."""
    path = nova.instances_path
    conf = ", ".join(nova.files) or f"{DEFAULT_NOVA_CONF} (absent: Nova's defaults)"

    def refuse(reason: str) -> errors.ConfigError:
        return errors.ConfigError(path=conf, reason=f"[DEFAULT] instances_path = {path}: {reason}")

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise refuse("no such directory") from None
    except OSError as exc:
        raise refuse(_strerror(exc)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise refuse("not a directory")
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as exc:
        raise refuse(f"cannot list it: {_strerror(exc)}") from None


def _strerror(exc: OSError) -> str:
    """``Permission denied``, never ``does not exist`` for it; no Python repr."""
    if exc.errno == errno.ENOTDIR:
        return "a component of the path is not a directory"
    return exc.strerror or _one_line(exc)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
