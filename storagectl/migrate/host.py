"""Whole-host conversion: ``storagectl migrate --all --to X`` (issue #15, part 3).

A host's layout changes in three moves: every instance's disks are moved to X (each one
a journaled migration, as ``migrate INSTANCE --to X``), then the operator sets the
nova.conf lines the report names, and from then on Nova opens every disk as it is
stored. The host plan says up front what will move, what cannot (running instances -
until live moves exist - instances without a record, refusals) and what the space on
each target must hold; the moves run ``parallel`` at a time under one bandwidth cap.

The host journal (``<state_path>/storagectl-host-migration.json``, written atomically
after every change) lists the instances and how far each got: after a kill -9 of
storagectl ``migrate --resume --all`` finishes each instance's own journal, then moves
the ones not started; ``migrate --status`` shows it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from storagectl import errors
from storagectl.backends import Storage, registry
from storagectl.backends.base import nova_settings
from storagectl.host.config import NovaConfig
from storagectl.host.fsutil import atomic_write, fsync_dir
from storagectl.inspect.inspection import inspect_hosts
from storagectl.migrate.journal import journal_path
from storagectl.migrate.plan import Options, Plan
from storagectl.migrate.retained import retained_locations
from storagectl.model import attrs
from storagectl.model.layout import Code, Role
from storagectl.record import record as rec

LOG = logging.getLogger(__name__)

HOST_JOURNAL = "storagectl-host-migration.json"
HOST_JOURNAL_VERSION = 1
#: an instance's place in a conversion
PLANNED, DONE, FAILED, SKIPPED, REFUSED = "planned", "done", "failed", "skipped", "refused"


class HostMigrationRefused(errors.StorageCtlError):
    template = "cannot convert %(uri)s to %(to)s: %(reason)s"


def host_journal_path(nova: NovaConfig) -> str:
    """Beside the instances, not among them: ``state_path`` is the compute host's own
    (an ``instances_path`` may be shared by several hosts)."""
    return os.path.join(nova.state_path, HOST_JOURNAL)


def target_settings(to: str, nova: NovaConfig, options: Options) -> list[tuple[str, str, str]]:
    """The nova.conf settings under which Nova reads disks moved to ``to`` as stored."""
    backend = registry.backend_class(to)
    where = nova_settings(
        nova,
        nova.instances_path,
        volume_group=options.volume_group,
        pool=options.pool,
        ceph_conf=options.ceph_conf,
        rbd_user=options.rbd_user,
    )
    probe = backend.target(to, "00000000-0000-0000-0000-000000000000", "disk", where)
    return list(backend.nova_conf_for(probe))


@dataclass
class HostItem:
    """One instance of the conversion."""

    uuid: str
    name: str
    status: str
    reason: str | None = None
    plan: Plan | None = None  # its own journal holds it once started
    virtual_bytes: int = 0
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs(self, "uuid", "name", "status", "reason", "virtual_bytes", "seconds")


@dataclass
class HostPlan:
    uri: str
    to: str
    options: Options
    parallel: int
    bwlimit: int | None  # MiB/s for the whole host
    keep_going: bool
    nova_conf: list[str]  # the lines to set once every instance is moved
    items: list[HostItem] = field(default_factory=list)
    #: space name -> (bytes needed, bytes free or None)
    space: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    #: the nova.conf to be as the operator named it (``{"files": [...], "assume":
    #: [[section, option, value], ...]}`` from --nova-conf-after / --assume), journaled so
    #: that --resume --all guards each move with the same; None: the target's settings
    nova_after: dict[str, list] | None = None

    @property
    def planned(self) -> list[HostItem]:
        return [i for i in self.items if i.status == PLANNED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.uri,
            **attrs(self, "to", "parallel", "bwlimit", "keep_going"),
            "instances": [
                i.to_dict() | {"plan": i.plan.to_dict() if i.plan else None} for i in self.items
            ],  # fmt: skip
            "space": {k: {"needed": n, "free": f} for k, (n, f) in self.space.items()},
            "nova_conf": list(self.nova_conf),
        }

    def lines(self) -> list[str]:
        planned = self.planned
        total = sum(i.virtual_bytes for i in planned)
        out = [
            f"convert {self.uri} to {self.to}: {len(planned)} instance(s) to move, "
            f"{total} virtual bytes, {self.parallel} at a time"
            + (f", {self.bwlimit} MiB/s in all" if self.bwlimit else "")
        ]
        for n, item in enumerate(planned, 1):
            moves = ", ".join(
                f"{m.name} {m.source.backend}->{m.dest.backend}" for m in item.plan.moves
            )  # type: ignore[union-attr]
            out.append(f"  {n}. {item.name} ({item.uuid}): {moves} [{item.virtual_bytes} bytes]")
        for item in self.items:
            if item.status != PLANNED:
                out.append(f"  {item.status}: {item.name} ({item.uuid}): {item.reason}")
        for name, (needed, free) in self.space.items():
            room = f", {free} free" if free is not None else ""
            out.append(f"  space: {name} needs {needed} bytes{room}")
        fail = "the others go on (--keep-going)" if self.keep_going else "no new move starts"
        out.append(f"  on a failure: that instance is rolled back or left to --resume; {fail}")
        out.append("  when every instance is moved, set in nova.conf:")
        out += [f"    {line}" for line in self.nova_conf]
        return out


@dataclass(frozen=True)
class Policy:
    """How the operator wants the host converted (``migrate --all`` options)."""

    sources: tuple[str, ...] = ()  # --from: only disks on these backends
    parallel: int = 1  # instances at once
    bwlimit: int | None = None  # MiB/s for the whole host
    keep_going: bool = False
    state: str = "any"  # which instances are selected: shutoff | running | any


def plan_host(
    prepare: Callable[[str, Options], Plan],
    storage: Storage,
    settings: Any,
    options: Options,
    policy: Policy,
    nova_conf: list[str],
) -> HostPlan:
    """Every instance of the host that has a disk to move to ``options.to``: planned with
    ``prepare`` (the engine's, with its Nova guard), or skipped / refused with the reason.
    ``settings``: the engine's (``uri``, ``nova``, ``runner``)."""
    uri, nova, runner = settings.uri, settings.nova, settings.runner
    sources, parallel, bwlimit, state = (
        policy.sources, policy.parallel, policy.bwlimit, policy.state
    )  # fmt: skip
    keep_going = policy.keep_going
    to = options.to
    if bwlimit:
        options = replace(options, bwlimit=max(1, bwlimit // parallel))
    roles = {Role(r) for r in options.roles}
    hp = HostPlan(uri, to, options, parallel, bwlimit, keep_going, nova_conf)
    result = inspect_hosts([uri], nova, runner, use_records=True)
    for failed in result.failed_hosts:
        raise errors.HostUnreachable(uri=failed.uri, reason=failed.error)
    chosen: list[HostItem] = []
    for layout in sorted(result.instances, key=lambda i: (i.name, i.uuid)):
        movable = [
            d
            for d in layout.disks
            if d.role in roles
            and registry.stored(d.backend)
            and d.backend.value != to
            and (not sources or d.backend.value in sources)
        ]
        if not movable:
            continue
        if state != "any" and (layout.state == "shutoff") != (state == "shutoff"):
            continue  # not selected (--state); still_misread() names it if it matters
        item = HostItem(layout.uuid, layout.name, PLANNED)
        if layout.state != "shutoff" and options.offline:
            item.status = SKIPPED
            item.reason = f"it is {layout.state}: --offline moves only shut-off instances"
        else:
            chosen.append(item)
        hp.items.append(item)

    def planned(item: HostItem) -> None:
        try:
            item.plan = prepare(item.uuid, options)
        except errors.StorageCtlError as exc:
            item.status, item.reason = REFUSED, str(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a refusal of that instance, not a crash
            LOG.exception("planning %s failed unexpectedly", item.uuid)
            item.status, item.reason = REFUSED, f"unexpected {type(exc).__name__}: {exc}"
            return
        item.virtual_bytes = sum(m.virtual_size for m in item.plan.moves)

    # Each prepare is an inspection, the Nova guard and a preflight (qemu-img measure):
    # as many at once as moves will run.
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        list(pool.map(planned, chosen))
    _space(hp, storage)
    return hp


def _space(hp: HostPlan, storage: Storage) -> None:
    """Bytes each target must hold, summed over the whole host (preflight checked each
    instance alone); a sum past what is free refuses the conversion up front."""
    needed: dict[str, int] = {}
    sample: dict[str, Any] = {}
    for item in hp.planned:
        for m in item.plan.moves:  # type: ignore[union-attr]
            name = storage.of(m.dest).space_name(m.dest)
            needed[name] = needed.get(name, 0) + int(m.needed or 0)
            sample.setdefault(name, m.dest)
    for name, total in needed.items():
        free = storage.free_bytes(sample[name])
        hp.space[name] = (total, free)
        if free is not None and total > free:
            raise HostMigrationRefused(
                uri=hp.uri,
                to=hp.to,
                reason=f"{name} has {free} bytes free, the moves need {total}; make room "
                "or convert fewer instances at once (name them)",
            )


# -- the host journal -------------------------------------------------------------------


def write_host_journal(path: str, hp: HostPlan, started_at: str, assume: tuple = ()) -> None:
    data = {
        "version": HOST_JOURNAL_VERSION,
        "uri": hp.uri,
        "to": hp.to,
        "options": hp.options.to_dict(),
        "parallel": hp.parallel,
        "bwlimit": hp.bwlimit,
        "keep_going": hp.keep_going,
        "nova_conf": hp.nova_conf,
        "assume": [list(a) for a in assume],
        "nova_after": hp.nova_after,
        "started_at": started_at,
        "pid": os.getpid(),
        "instances": [i.to_dict() for i in hp.items],
    }
    atomic_write(path, (json.dumps(data, indent=1) + "\n").encode(), mode=0o600)


def remove_host_journal(path: str) -> None:
    """The conversion is over: every instance moved, skipped or refused."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(path))


def read_host_journal(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise errors.UsageError(reason=f"unreadable host journal {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != HOST_JOURNAL_VERSION:
        raise errors.UsageError(reason=f"{path} is not a storagectl host journal (version 1)")
    return data


def from_journal(data: dict[str, Any], path: str = "the host journal") -> HostPlan:
    """The host plan a host journal holds; a journal of the right version with fields
    of the wrong names or shapes is a clear error naming it, never a traceback."""
    try:
        return _from_journal(data)
    except KeyError as exc:
        reason = f"{path} is not a storagectl host journal (field {exc.args[0]!r} missing)"
    except (TypeError, ValueError, AttributeError) as exc:
        reason = f"{path} is not a storagectl host journal (a field of the wrong shape: {exc})"
    raise errors.UsageError(reason=reason)


def _from_journal(data: dict[str, Any]) -> HostPlan:
    hp = HostPlan(
        data["uri"],
        data["to"],
        Options.from_dict(data["options"]),
        int(data["parallel"]),
        data.get("bwlimit"),
        bool(data.get("keep_going")),
        list(data.get("nova_conf") or ()),
    )
    spec = data.get("nova_after")
    if spec is not None:
        hp.nova_after = {
            "files": [str(f) for f in spec["files"]],
            "assume": [[str(x) for x in a] for a in spec["assume"]],
        }
    for raw in data["instances"]:
        hp.items.append(HostItem(**{k: raw.get(k) for k in HostItem.__dataclass_fields__}))
    return hp


# -- running it -------------------------------------------------------------------------


@dataclass
class Report:
    moved: list[HostItem]
    failed: list[HostItem]
    left: list[HostItem]  # skipped, refused, or not started after a failure
    seconds: float
    retained: list[tuple[str, str, int]]  # (uuid, location, bytes)
    nova_conf: list[str]

    def lines(self, uri: str, misread: list[tuple[str, str]] = ()) -> list[str]:  # type: ignore[assignment]
        """``misread``: instances Nova would still misread with the new nova.conf (not
        selected, running, disks not moved): while there is one, nova.conf must wait."""
        moved_bytes = sum(i.virtual_bytes for i in self.moved)
        out = [
            f"{uri}: {len(self.moved)} instance(s) moved ({moved_bytes} virtual bytes) in "
            f"{self.seconds:.1f} s, {len(self.failed)} failed, {len(self.left)} not moved"
        ]
        out += [f"  failed: {i.name} ({i.uuid}): {i.reason}" for i in self.failed]
        out += [f"  not moved: {i.name} ({i.uuid}): {i.reason}" for i in self.left]
        if self.retained:
            held = sum(b for _, _, b in self.retained)
            out.append(
                f"  retained sources: {len(self.retained)} holding {held} bytes; when the "
                "instances are checked, delete them with:"
            )
            uuids = dict.fromkeys(u for u, _, _ in self.retained)
            out += [f"    storagectl migrate --delete-retained {u} --yes" for u in uuids]
        if misread:
            names = ", ".join(f"{n} ({u})" for u, n in misread)
            out.append(
                f"  nova.conf must not change yet: Nova would still misread {len(misread)} "
                f"instance(s) with it: {names}"
            )
        elif self.failed or self.left:
            out.append(
                "  nova.conf must not change yet: Nova would misread the instances not moved"
            )
        else:
            out.append("  every instance is moved: set in nova.conf now")
        out += [f"    {line}" for line in self.nova_conf]
        return out


def run_host(
    hp: HostPlan,
    journal: str,
    run_one: Callable[[HostItem], None],
    *,
    on_done: Callable[[HostItem], None] = lambda _i: None,
    started_at: str | None = None,
    assume: tuple = (),
) -> list[HostItem]:
    """Run the planned moves ``hp.parallel`` at a time (``run_one`` does one instance:
    migrate or resume it); the host journal is rewritten after each. Without
    ``keep_going`` no move starts after a failure."""
    started_at = started_at or rec.utc_now()
    lock = threading.Lock()
    write_host_journal(journal, hp, started_at, assume)
    todo = [i for i in hp.items if i.status in (PLANNED, FAILED)]
    running: dict[Future, HostItem] = {}
    stop = False

    def one(item: HostItem) -> None:
        t0 = time.monotonic()
        try:
            run_one(item)
        except errors.StorageCtlError as exc:
            item.status, item.reason = FAILED, str(exc)
        except Exception as exc:  # noqa: BLE001 - one instance's, journaled, never a crash
            LOG.exception("move of %s failed unexpectedly", item.uuid)
            item.status, item.reason = FAILED, f"unexpected {type(exc).__name__}: {exc}"
        else:
            item.status, item.reason = DONE, None
        item.seconds = round(time.monotonic() - t0, 3)

    with ThreadPoolExecutor(max_workers=max(1, hp.parallel)) as pool:
        while todo or running:
            while todo and not stop and len(running) < hp.parallel:
                item = todo.pop(0)
                running[pool.submit(one, item)] = item
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                item = running.pop(fut)
                fut.result()
                with lock:
                    write_host_journal(journal, hp, started_at, assume)
                on_done(item)
                if item.status == FAILED and not hp.keep_going:
                    stop = True
            if stop and not running:
                break
    return hp.items


def report(hp: HostPlan, seconds: float, nova: NovaConfig, storage: Storage) -> Report:
    moved = [i for i in hp.items if i.status == DONE]
    failed = [i for i in hp.items if i.status == FAILED]
    left = [i for i in hp.items if i.status not in (DONE, FAILED)]
    for item in left:
        if item.status == PLANNED:
            item.reason = "not started: an earlier instance failed (no --keep-going)"
    retained = []
    for item in moved:
        inst_dir = nova.instance_dir(item.uuid)
        try:
            locations = retained_locations(inst_dir, item.uuid)
        except errors.StorageCtlError:
            continue
        for loc in locations:
            retained.append((item.uuid, loc.describe(), _held(storage, loc)))
    return Report(moved, failed, left, seconds, retained, hp.nova_conf)


def _held(storage: Storage, loc: Any) -> int:
    try:
        return storage.data_bytes(loc)
    except errors.StorageCtlError:
        return 0


def still_misread(uri: str, nova_after: NovaConfig, runner: Any) -> list[tuple[str, str]]:
    """Instances Nova, with the nova.conf to be, would misread: what stops the flip."""
    result = inspect_hosts([uri], nova_after, runner)
    return [
        (i.uuid, i.name)
        for i in result.instances
        if any(f.code == Code.NOVA_WOULD_MISREAD for f in i.findings)
    ]


def already_moved(nova: NovaConfig, uuid: str, options: Options) -> bool:
    """Whether the record says every selected disk is on the target already: a move that
    finished after the host journal was last written (kill -9 between the two)."""
    try:
        record = rec.read_record(nova.instance_dir(uuid), expect_uuid=uuid)
    except errors.StorageCtlError:
        return False
    if record is None:
        return False
    roles = {Role(r) for r in options.roles}
    chosen = [d for d in record.disks if d.role in roles and registry.stored(d.backend)]
    return bool(chosen) and all(d.backend.value == options.to for d in chosen)


def has_instance_journal(nova: NovaConfig, uuid: str) -> bool:
    return os.path.exists(journal_path(nova.instance_dir(uuid)))
