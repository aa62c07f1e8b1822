"""The migration engine: refusals, then the journaled steps, resume and rollback.

::

    engine = Engine(Settings(uri, nova, runner, lock_path))
    plan = engine.prepare("instance-00000001", Options(to="flat"))   # refuses or plans
    engine.run(plan)                                                 # under the lock

Steps (journal.STEPS): plan, preflight, create, copy, verify, switch, cleanup; each is
journaled before and after and is safe to run again, which is all ``resume`` does. A
failed copy or verification rolls back at once (targets removed, source untouched).

A running instance moves live (journal.LIVE_STEPS, :mod:`storagectl.migrate.live`):
plan, preflight, create, mirror, ready, pivot, switch, cleanup. The block copy runs in
libvirtd: a kill -9 of storagectl leaves it running, ``--resume`` finds it and goes on,
``--rollback`` aborts it and removes the target - until the pivot; from then on the guest
writes only to the target and the way is forward (``--resume``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from storagectl import errors
from storagectl.audit.interrupted import migration_state
from storagectl.backends import Storage, registry
from storagectl.host.config import NovaConfig
from storagectl.host.fsutil import same_file
from storagectl.host.hosts import is_local_uri
from storagectl.host.libvirt_port import (  # driver_problem: importable from here too
    LibvirtDomains,
    LibvirtPort,
    driver_problem,  # noqa: F401
)
from storagectl.host.locks import instance_lock
from storagectl.host.process import Runner
from storagectl.host.resolve import instance_uuid
from storagectl.inspect.inspection import inspect_hosts
from storagectl.inspect.storage import StorageView
from storagectl.migrate import live as livemod
from storagectl.migrate import novaguard, roundtrip, switch
from storagectl.migrate.copy import NullProgress, Progress, copy_all
from storagectl.migrate.journal import (
    Journal,
    JournalInvalid,
    journal_path,
    read_journal,
    steps_of,
)
from storagectl.migrate.plan import (
    DiskMove,
    Location,
    MigrationRefused,
    Options,
    Plan,
    describe,
    make_plan,
)
from storagectl.migrate.preflight import preflight
from storagectl.migrate.retained import (
    delete_retained,
    remove_live_aliases,
    retained_locations,
)
from storagectl.migrate.verify import verify_disk
from storagectl.model import naming
from storagectl.model.layout import Code, blocking
from storagectl.record import record as rec
from storagectl.record.mirror import write_mirror

LOG = logging.getLogger(__name__)


#: domain states a live move starts from
LIVE_STATES = ("running", "paused")


def live_refusal(plan: Plan, storage: Storage) -> str | None:
    """Why the disks of ``plan`` cannot move while the guest runs, or None."""
    for m in plan.moves:
        why = registry.backend_class(m.source.backend).live_problem(m.source)
        if why:
            return f"{m.name}: {why}; shut it off"
        if m.role == "config":
            return "the config drive is read-only media: move it offline (shut it off)"
        if not m.target_dev:
            return f"{m.name} has no target device in the domain"
        why = registry.backend_class(m.dest.backend).live_target_problem(
            m.dest, sparse=plan.options.sparse_lvs
        )
        if why:
            return f"{m.name}: {why}"
    return None


class MigrationFailed(errors.StorageCtlError):
    template = "migration of %(instance)s failed at %(step)s: %(reason)s; %(outcome)s"


class NoMigration(errors.StorageCtlError):
    template = "no migration of %(instance)s is in progress (no %(path)s)"


class DriverUnsupported(errors.StorageCtlError):
    template = (
        "cannot migrate on %(uri)s: %(reason)s; run storagectl migrate on the compute host "
        "against its real hypervisor (e.g. -c qemu:///system)"
    )


@dataclass
class Settings:
    uri: str
    nova: NovaConfig
    runner: Runner
    lock_path: str
    fault: str | None = None  # test-only STORAGECTL_FAULT, see journal.py
    ceph_timeout: int = 60
    progress: Progress = field(default_factory=NullProgress)
    say: Callable[[str], None] = lambda _msg: None
    libvirt: LibvirtPort | None = None  # None: LibvirtDomains(uri)
    #: the nova.conf the host will have when the moves are done (--assume,
    #: --nova-conf-after); None: the one it has
    nova_after: NovaConfig | None = None


class Engine:
    def __init__(self, settings: Settings) -> None:
        self._reentered = False
        self._untouched: set[str] = set()
        self.s = settings
        self.libvirt: LibvirtPort = settings.libvirt or LibvirtDomains(settings.uri)
        self.storage = Storage(settings.runner, ceph_timeout=settings.ceph_timeout)
        # Plans this engine preflighted in prepare(): the journaled preflight step then
        # re-checks only what another process could have changed since (target names).
        self._checked: set[str] = set()
        #: live moves: seconds each disk's pivot took, and the pause of --verify paused
        self.pivot_seconds: dict[str, float] = {}
        self.paused_seconds: float | None = None

    # -- starting -----------------------------------------------------------------

    def check_driver(self) -> None:
        """Refuse up front a hypervisor whose driver cannot keep a redefined domain."""
        reason = self.libvirt.driver_problem()
        if reason:
            raise DriverUnsupported(uri=self.s.uri, reason=reason)

    def prepare(self, instance: str, options: Options) -> Plan:
        """Refuse (nothing changed) or return the plan, preflight-checked."""
        s = self.s
        if not is_local_uri(s.uri):
            raise errors.UsageError(reason=f"{s.uri} is remote: run migrate on the host itself")
        result = inspect_hosts([s.uri], s.nova, s.runner, [instance], use_records=True)
        for host in result.failed_hosts:
            raise errors.HostUnreachable(uri=host.uri, reason=host.error)
        if not result.instances:
            raise errors.InstanceNotFound(instance=instance, hosts=s.uri)
        layout = result.instances[0]
        who = f"{layout.name} ({layout.uuid})"

        def refuse(reason: str) -> MigrationRefused:
            return MigrationRefused(instance=who, reason=reason)

        if layout.source != "metadata":
            invalid = [f.message for f in layout.findings if f.code == Code.METADATA_INVALID]
            raise refuse(
                invalid[0]
                if invalid
                else f"it has no storage record; run storagectl persist {layout.uuid} first"
            )
        if layout.state != "shutoff":
            if options.offline:
                raise refuse(
                    f"it is {layout.state}; shut it off (openstack server stop "
                    f"{layout.uuid}), or move it live (without --offline)"
                )
            if layout.state not in LIVE_STATES:
                raise refuse(f"it is {layout.state}: neither shut off nor running")
            options = dataclasses.replace(options, live=True)
        elif options.verify_paused or options.sync_writes:
            options = dataclasses.replace(options, verify_paused=False, sync_writes=False)
        inst_dir = s.nova.instance_dir(layout.uuid)
        with self._lock(layout.uuid, who):
            if os.path.exists(journal_path(inst_dir)):
                raise refuse(
                    "a migration is already in progress (journal "
                    f"{journal_path(inst_dir)}); use --resume or --rollback (storagectl "
                    f"migrate --resume {layout.uuid}, storagectl migrate --rollback {layout.uuid})"
                )
        drift = result.drift.get(layout.uuid) or []
        if drift:
            raise refuse(
                "the record no longer matches reality (run storagectl audit): "
                + "; ".join(d.message for d in drift)
            )
        critical = blocking(layout.findings)
        if critical:
            raise refuse(
                "critical findings (run storagectl audit): "
                + "; ".join(f"{f.code} ({f.disk or 'instance'})" for f in critical)
            )
        record = rec.read_record(inst_dir, expect_uuid=layout.uuid)
        if record is None:  # removed since inspection
            raise refuse(f"it has no storage record; run storagectl persist {layout.uuid} first")
        plan = make_plan(record, options, s.nova, uri=s.uri)
        if options.live:
            why = live_refusal(plan, self.storage)
            if why:
                raise refuse(why)
            for m in plan.moves:
                # A file target whose name no file holds (the source is an LV or an RBD
                # image) is mirrored at that name: the guest then runs on Nova's name,
                # with no alias. (A source at that name is still there while it runs.)
                if m.temp_path and m.retained_path is None:
                    m.temp_path = None
        assumed = s.nova_after is not None
        nova = s.nova_after or s.nova
        found = novaguard.outcome(plan, record, nova, StorageView(s.runner), assumed=assumed)
        if found.misread:
            raise refuse(novaguard.refusal(plan, found, assumed=assumed))
        plan.nova = found.to_dict()
        preflight(plan, self.storage)
        self._checked.add(plan.uuid)
        return plan

    def run(self, plan: Plan) -> None:
        """Carry out a prepared plan, journaled, under the instance lock."""
        who = f"{plan.name} ({plan.uuid})"
        domains = self.libvirt
        try:
            with self._lock(plan.uuid, who):
                if read_journal(plan.instance_dir) is not None:
                    raise MigrationRefused(
                        instance=who,
                        reason="a migration is already in progress; use --resume or --rollback "
                        f"(storagectl migrate --resume {plan.uuid}, storagectl migrate "
                        f"--rollback {plan.uuid})",
                    )
                active = domains.is_active(plan.uuid)
                if active and not plan.options.live:
                    raise MigrationRefused(
                        instance=who,
                        reason=f"it was started since it was planned; shut it off "
                        f"(openstack server stop {plan.uuid}), or plan it again (a live move)",
                    )
                if plan.options.live and not active:
                    raise MigrationRefused(
                        instance=who,
                        reason="it was shut off since it was planned (a live move); run the "
                        "migration again (it moves offline)",
                    )
                record_text = rec.record_path(plan.instance_dir).read_text()
                info = os.path.join(plan.instance_dir, "disk.info")
                journal = Journal(
                    plan=plan,
                    original_xml=domains.persistent_xml(plan.uuid),
                    original_record=record_text,
                    original_disk_info=_read_text(info),
                    started_at=rec.utc_now(),
                    pid=os.getpid(),
                )
                self._steps(journal, domains)
        finally:
            domains.close()

    # -- resume, rollback, status, delete-retained ----------------------------------

    def resume(self, instance: str) -> Plan:
        uuid = self.resolve(instance)
        with self._journaled(uuid, instance) as journal:
            self._refuse_resume(journal, instance)
            self.s.say(f"resuming {journal.plan.name} at {journal.step} ({journal.phase})")
            journal.pid, journal.error = os.getpid(), None
            self._steps(journal, self.libvirt)
            return journal.plan

    def rollback(self, instance: str) -> Plan:
        uuid = self.resolve(instance)
        with self._journaled(uuid, instance) as journal:
            self._rollback(journal, self.libvirt)
            return journal.plan

    def status(self, instance: str | None = None) -> list[dict]:
        """In-progress migrations (one instance, or every one under instances_path)."""
        if instance:
            dirs = [self.s.nova.instance_dir(self.resolve(instance))]
        else:
            root = self.s.nova.instances_path
            dirs = (
                sorted(os.path.join(root, d) for d in os.listdir(root) if naming.is_uuid(d))
                if os.path.isdir(root)
                else []
            )
        out = []
        for d in dirs:
            try:
                j = read_journal(d)
            except JournalInvalid as exc:
                # One bad journal is a row of its own, never the end of the listing.
                out.append(
                    {
                        "uuid": os.path.basename(d),
                        "name": "-",
                        "to": "-",
                        "step": "-",
                        "phase": "-",
                        "done": [],
                        "started_at": "",
                        "pid": 0,
                        "state": "unreadable",
                        "state_detail": "unreadable journal",
                        "error": str(exc),
                        "disks": [],
                    }
                )
                continue
            if j is not None:
                state, detail = migration_state(j.pid, self.s.lock_path, j.plan.uuid)
                out.append(
                    {
                        "uuid": j.plan.uuid,
                        "name": j.plan.name,
                        "to": j.plan.options.to,
                        "step": j.step,
                        "phase": j.phase,
                        "done": j.done,
                        "started_at": j.started_at,
                        "pid": j.pid,
                        "state": state,
                        "state_detail": detail,
                        "error": j.error,
                        "disks": [m.name for m in j.plan.moves],
                    }
                )
        return out

    def preview(self, mode: str, instance: str) -> list[str]:
        """What ``resume``, ``rollback`` or ``delete_retained`` would do, checked as the
        real run checks (same refusals, under the instance lock); nothing is changed."""
        uuid = self.resolve(instance)
        inst_dir = self.s.nova.instance_dir(uuid)
        if mode == "delete_retained":
            with self._lock(uuid, instance):
                if read_journal(inst_dir) is not None:
                    raise MigrationRefused(instance=instance, reason="a migration is in progress")
                locations = retained_locations(inst_dir, uuid)
            if not locations:
                return [f"instance {uuid}: nothing retained, nothing to delete"]
            return [f"instance {uuid}: would delete {len(locations)} retained source(s)"] + [
                f"  delete {loc.backend} {loc.describe()}" for loc in locations
            ]
        with self._journaled(uuid, instance) as j:
            who = f"{j.plan.name} ({j.plan.uuid})"
            head = (
                f"migration of {who} to {j.plan.options.to}, stopped at {j.step} "
                f"({j.phase}), started {j.started_at or '?'} by pid {j.pid}"
            )
            if mode == "resume":
                self._refuse_resume(j, instance)
                left = [s for s in steps_of(j.plan) if s not in j.done]
                return [
                    f"would resume the {head}",
                    f"  steps to run: {', '.join(left) or '(none)'}",
                    *describe(j.plan),
                ]
            return [f"would roll back the {head}", *self._undo_lines(j, self.libvirt)]

    def _refuse_rollback(self, j: Journal, domains: switch.Domains) -> None:
        """What makes a rollback impossible (the real one and its dry run alike)."""
        plan, who = j.plan, f"{j.plan.name} ({j.plan.uuid})"
        deleting = plan.options.delete_source or plan.options.delete_retained
        if deleting and j.started("cleanup"):
            raise MigrationRefused(
                instance=who,
                reason="the sources are being deleted (cleanup); only "
                f"storagectl migrate --resume {plan.uuid} can finish this migration",
            )
        if plan.options.live:
            pivoted = self._pivoted(j)
            if pivoted:
                raise MigrationRefused(
                    instance=who,
                    reason=f"the running guest already writes to the target of "
                    f"{', '.join(pivoted)} (pivoted): only storagectl migrate --resume "
                    f"{plan.uuid} can finish this migration; a move back is another live "
                    "migration",
                )
        elif j.started("switch") and domains.is_active(plan.uuid):
            raise MigrationRefused(instance=who, reason="it is running; shut it off")

    def _undo_lines(self, j: Journal, domains: switch.Domains) -> list[str]:
        plan = j.plan
        self._refuse_rollback(j, domains)
        lines = []
        if j.started("switch"):
            lines.append(
                "  restore the domain XML, storage.yaml and disk.info saved when it started"
            )
            for m in plan.moves:
                if m.retained_path:
                    lines.append(
                        f"  {m.name}: back to {m.source.describe()} (from {m.retained_path})"
                    )
        if plan.options.live and j.started("mirror"):
            lines.append("  abort the block copies still running (the guest stays on its source)")
        if j.started("create"):
            for m in plan.moves:
                lines.append(f"  {m.name}: remove the target {m.copy_dest.describe()}")
        if len(lines) == 0:
            lines.append("  nothing was created yet: only the journal is removed")
        lines.append(f"  remove the journal {j.path}")
        return lines

    def delete_retained(self, instance: str) -> list[str]:
        uuid = self.resolve(instance)
        inst_dir = self.s.nova.instance_dir(uuid)
        with self._lock(uuid, instance):
            if read_journal(inst_dir) is not None:
                raise MigrationRefused(instance=instance, reason="a migration is in progress")
            try:
                running = self.libvirt.is_active(uuid)
            except errors.InstanceNotFound:
                running = False
            in_use: set[str] = set()
            if running:
                with self._live(uuid) as live:
                    in_use = {m.source for m in live.state().values() if m.source}
            # the names a guest moved live ran on, first: a retained source may be the
            # other name of one (a later live move from the alias)
            done = remove_live_aliases(inst_dir, in_use)
            return done + delete_retained(inst_dir, uuid, self.storage, self.s.runner)

    def resolve(self, instance: str) -> str:
        return instance_uuid(instance, self._uuid_of)

    def _uuid_of(self, name: str) -> str:
        try:
            return self.libvirt.uuid_of(name)
        finally:
            self.libvirt.close()

    # -- the steps ----------------------------------------------------------------

    def _steps(self, j: Journal, domains: switch.Domains) -> None:
        for step in steps_of(j.plan):
            if step in j.done:
                continue
            # Whether an earlier run already began this step (its leftovers are its own).
            self._reentered = j.step == step
            j.mark(step, "before", self.s.fault)
            try:
                getattr(self, f"_{step}")(j, domains)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after cleaning up
                self._failed(j, domains, step, exc)
            j.mark(step, "after", self.s.fault)
            self.s.say(f"{j.plan.name}: {step} done")
        j.remove()

    def _failed(self, j: Journal, domains: switch.Domains, step: str, exc: Exception) -> None:
        who = f"{j.plan.name} ({j.plan.uuid})"
        if isinstance(exc, MigrationRefused) and step == "preflight":
            j.remove()  # nothing was changed yet
            raise exc
        if isinstance(exc, MigrationRefused) and step == "create":
            # Refused before anything was created (a name taken since preflight): undo
            # the journaled renames only, never remove what holds the name.
            roundtrip.restore(j.plan, self.storage)
            j.remove()
            raise exc
        j.error = f"{step}: {exc}"
        try:
            j.save()
        except OSError:  # a full disk is one reason to be here; the rollback frees it
            LOG.warning("cannot record the error in the journal", exc_info=True)
        if step in ("copy", "verify", "create", "mirror", "ready") or isinstance(
            exc, livemod.PausedVerifyFailed
        ):
            try:
                self._rollback(j, domains)
            except Exception as undo_exc:  # noqa: BLE001
                LOG.error("rollback after a failed %s failed", step, exc_info=True)
                outcome = (
                    f"the rollback failed too ({undo_exc}); run "
                    "storagectl migrate --rollback when it can work"
                )
            else:
                outcome = "rolled back: targets removed, source untouched"
        else:
            outcome = "the journal is kept: storagectl migrate --resume or --rollback"
        raise MigrationFailed(instance=who, step=step, reason=str(exc), outcome=outcome) from exc

    def _plan(self, j: Journal, domains: switch.Domains) -> None:
        pass  # the plan is the journal itself

    def _preflight(self, j: Journal, domains: switch.Domains) -> None:
        preflight(j.plan, self.storage, names_only=j.plan.uuid in self._checked)

    def _create(self, j: Journal, domains: switch.Domains) -> None:
        def refuse(reason: str) -> MigrationRefused:
            return MigrationRefused(instance=f"{j.plan.name} ({j.plan.uuid})", reason=reason)

        try:  # retained copies in the way, aside first (each rename journaled)
            roundtrip.displace(j.plan, self.storage, save=j.save)
        except roundtrip.DisplaceRefused as exc:
            raise refuse(f"{exc}; run the migration again (it picks another name)") from None
        if not self._reentered:
            # Create never ran before: preflight found every name free, so whatever holds
            # one now is not this migration's; refused before anything is created, and
            # never removed (_failed undoes the renames above and drops the journal).
            for m in j.plan.moves:
                if self.storage.exists(m.copy_dest):
                    loc = m.copy_dest
                    raise refuse(
                        f"{loc.describe()} appeared after preflight and is not this "
                        f"migration's; if nothing needs it, remove it "
                        f"({self.storage.remove_command(loc)}) "
                        "and run the migration again"
                    )
        for m in j.plan.moves:
            loc = m.copy_dest
            if self.storage.exists(loc):  # left by this create, interrupted: ours
                self.storage.remove(loc, ours=True)
            self.storage.create(loc, m.virtual_size, sparse_lv=j.plan.options.sparse_lvs)

    def _copy(self, j: Journal, domains: switch.Domains) -> None:
        o = j.plan.options
        copy_all(
            j.plan.moves,
            self.storage,
            self.s.runner,
            self.s.progress,
            parallel=o.parallel,
            bwlimit=o.bwlimit,
        )

    def _verify(self, j: Journal, domains: switch.Domains) -> None:
        for m in j.plan.moves:
            verify_disk(m, self.storage, self.s.runner)

    def _switch(self, j: Journal, domains: switch.Domains) -> None:
        plan = j.plan
        if plan.options.live:
            for m in plan.moves:  # the guest's own flushes aside: the copy is on disk
                self.storage.of(m.copy_dest).make_durable(m.copy_dest)
        switch.forward(plan, j.original_xml, domains, self.storage, live=plan.options.live)
        new = switch.migrated_record(self._original_record(j), plan, now=rec.utc_now())
        write_mirror(new, self.s.runner)
        rec.write_record(plan.instance_dir, new)
        switch.write_disk_info(
            plan.instance_dir, switch.disk_info_after(j.original_disk_info, plan.moves)
        )

    def _cleanup(self, j: Journal, domains: switch.Domains) -> None:
        o = j.plan.options
        if not (o.delete_source or o.delete_retained):
            return
        if o.delete_source:
            for m in j.plan.moves:
                _remove_source(m.retained, self.storage)
        if o.delete_retained:
            roundtrip.remove_displaced(j.plan, self.storage)
        new = switch.migrated_record(
            self._original_record(j),
            j.plan,
            now=rec.utc_now(),
            keep_sources=not o.delete_source,
            keep_displaced=not o.delete_retained,
        )
        rec.write_record(j.plan.instance_dir, new)

    def _rollback(self, j: Journal, domains: switch.Domains) -> None:
        plan = j.plan
        self._refuse_rollback(j, domains)
        if plan.options.live and j.started("mirror"):
            self._abort_jobs(j)
        if j.started("switch"):
            switch.undo(plan, j.original_xml, domains, self.storage)
            rec.write_record(plan.instance_dir, self._original_record(j))
            switch.write_disk_info(plan.instance_dir, j.original_disk_info)
        if j.started("create"):
            for m in plan.moves:
                if not roundtrip.holds_retained(m, self.storage):  # not moved aside yet
                    self.storage.remove(m.copy_dest, ours=True)
            roundtrip.restore(plan, self.storage)  # retained copies back to their names
        j.remove()
        self.s.say(f"{plan.name}: rolled back")

    # -- helpers ------------------------------------------------------------------

    def _original_record(self, j: Journal) -> rec.Record:
        path = str(rec.record_path(j.plan.instance_dir))
        return rec.parse_record(j.original_record, path=path, expect_uuid=j.plan.uuid)

    def _journal(self, uuid: str, who: str) -> Journal:
        inst_dir = self.s.nova.instance_dir(uuid)
        journal = read_journal(inst_dir)
        if journal is None:
            raise NoMigration(instance=who, path=journal_path(inst_dir))
        return journal

    def _lock(self, uuid: str, who: str):  # noqa: ANN202 - a context manager
        return _Locked(self.s.lock_path, uuid, who)

    @contextlib.contextmanager
    def _journaled(self, uuid: str, who: str) -> Iterator[Journal]:
        """The journal of ``uuid``'s migration, under its lock (resume, rollback and their
        dry runs); the libvirt port is closed after."""
        try:
            with self._lock(uuid, who):
                yield self._journal(uuid, who)
        finally:
            self.libvirt.close()

    def _refuse_resume(self, j: Journal, who: str) -> None:
        active = self.libvirt.is_active(j.plan.uuid)
        if not j.plan.options.live:
            if active:
                raise MigrationRefused(
                    instance=who, reason="it is running; shut it off before resuming"
                )
            return
        if active:
            self._refuse_split_writes(j, who)
            return
        if not j.started("mirror"):
            return
        pivoted = self._pivoted(j)
        if not pivoted:
            raise MigrationRefused(
                instance=who,
                reason="the guest stopped before its disks were pivoted (the block copy ended "
                f"with it): roll back (storagectl migrate --rollback {j.plan.uuid}), then "
                "migrate it again (offline)",
            )
        left = [m.name for m in j.plan.moves if m.name not in pivoted]
        if left:
            raise MigrationRefused(
                instance=who,
                reason=f"the guest stopped with {', '.join(pivoted)} on the target and "
                f"{', '.join(left)} still on the source; neither a resume nor a rollback "
                "can make one disk set of that: start the instance and resume (the copies "
                "of the others start again), or see docs/design/live-moves.md",
            )

    def _refuse_split_writes(self, j: Journal, who: str) -> None:
        """A guest pivoted onto its targets (journaled) that runs on a source again was
        restarted from a definition naming the source - a Nova hard reboot (or a host
        boot's resume_guests_state_on_host_boot) before the switch rebuilt it from
        nova.conf. Its writes since the pivot are on the target, those since the restart
        on the source: switching now would hide the newest, a new copy would overwrite the
        older. Neither resume nor rollback picks one."""
        if "pivot" not in j.done or "switch" in j.done:
            return
        with self._live(j.plan.uuid) as live:
            state = live.state()
        for m in j.plan.moves:
            s, dest = state.get(m.target_dev or ""), self._dest_name(m)
            if s is None or s.source is None or s.source == dest or same_file(s.source, dest):
                continue
            raise MigrationRefused(
                instance=who,
                reason=f"{m.name} was pivoted onto {dest}, but the guest now runs on "
                f"{s.source} again (restarted from a definition naming its source before "
                "the switch - a Nova hard reboot?): its writes since the pivot are on the "
                "target, those since the restart on the source. Nothing was changed; shut "
                "the instance off, keep both, and see docs/design/live-moves.md "
                '("split writes")',
            )

    # -- live moves -------------------------------------------------------------------

    def _live(self, uuid: str) -> livemod.LiveDomain:
        return livemod.LiveDomain(self.s.uri, uuid)

    def _dest_name(self, m: DiskMove) -> str:
        """How the live XML names the target of ``m`` (a path, or pool/image)."""
        _type, source, _auth = self.storage.of(m.copy_dest).disk_xml(m.copy_dest, None)
        return livemod.source_name(source) or ""

    def _unpivoted(self, moves: list[DiskMove], state: dict[str, livemod.Mirror]) -> list[DiskMove]:
        """The moves whose disk the guest does not run on the target of yet."""
        none = livemod.Mirror(None, None, None)
        return [
            m for m in moves if state.get(m.target_dev or "", none).source != self._dest_name(m)
        ]

    def _copying(self, moves: list[DiskMove], state: dict[str, livemod.Mirror]) -> list[DiskMove]:
        """The moves whose copy into their target runs and is not ready yet."""
        none = livemod.Mirror(None, None, None)
        return [
            m
            for m in moves
            if (s := state.get(m.target_dev or "", none)).mirror == self._dest_name(m)
            and s.ready != "yes"
        ]

    def _pivoted(self, j: Journal) -> list[str]:
        """Disks the guest writes to on the target already (pivoted).

        Once the pivot step is done: every disk (whatever runs now - the guest may have
        been restarted on Nova's name since). While it is under way: the disks whose
        source is the target in the live XML (a running guest) or in the persistent
        definition (a guest shut off since: libvirt rewrites it at each pivot)."""
        if "pivot" in j.done:
            return [m.name for m in j.plan.moves]
        if not j.started("pivot"):
            return []
        if self.libvirt.is_active(j.plan.uuid):
            with self._live(j.plan.uuid) as live:
                sources = {dev: m.source for dev, m in live.state().items()}
        else:
            xml = self.libvirt.persistent_xml(j.plan.uuid)
            sources = {dev: m.source for dev, m in livemod.mirrors(xml).items()}
        return [
            m.name for m in j.plan.moves if sources.get(m.target_dev or "") == self._dest_name(m)
        ]

    def _abort_jobs(self, j: Journal) -> None:
        if not self.libvirt.is_active(j.plan.uuid):
            return  # the jobs ended with the guest
        with self._live(j.plan.uuid) as live:
            state = live.state()
            for m in j.plan.moves:
                s = state.get(m.target_dev or "")
                if s is not None and s.mirror == self._dest_name(m):
                    live.abort(m.target_dev or "")

    def _mirror(self, j: Journal, domains: switch.Domains) -> None:
        # targets the create step of this very run made, never copied into yet
        self._untouched = set() if self._reentered else {m.name for m in j.plan.moves}
        with self._live(j.plan.uuid) as live:
            self._ensure_mirrors(j, live)

    def _converge(
        self,
        j: Journal,
        live: livemod.LiveDomain,
        on_progress: Callable[[str, float], None] = lambda _d, _p: None,
    ) -> None:
        """Until the copy of every disk not pivoted yet is ready: copies are started (again,
        if one was lost) ``--parallel`` at a time - the next one once a running one is
        ready (a ready copy only mirrors the guest's new writes) - all within one
        ``--converge-timeout``."""
        plan = j.plan
        deadline = time.monotonic() + plan.options.converge_timeout
        while True:
            self._ensure_mirrors(j, live)
            state = live.state()
            none = livemod.Mirror(None, None, None)
            todo = self._unpivoted(plan.moves, state)
            started = [m for m in todo if state.get(m.target_dev or "", none).mirror is not None]
            waiting = [m.target_dev or "" for m in self._copying(started, state)]
            more = len(started) < len(todo)
            if not waiting and not more:
                return
            if not waiting:  # _ensure_mirrors starts the next one; never spin past the end
                if time.monotonic() >= deadline:
                    raise livemod.NotConverged(
                        instance=plan.uuid,
                        disks=", ".join(m.name for m in todo),
                        timeout=int(plan.options.converge_timeout),
                    )
                time.sleep(0.1)
                continue
            live.wait_ready(
                waiting,
                timeout=plan.options.converge_timeout,
                deadline=deadline,
                on_progress=on_progress,
                need=1 if more else None,
            )

    def _ensure_mirrors(self, j: Journal, live: livemod.LiveDomain) -> None:
        """Start the copy of disks that are neither pivoted nor being copied, as long as
        fewer than ``--parallel`` copies run that are not ready yet.

        A target the create step of this run made is used as it is. Any other may hold a
        copy that ended (a kill -9 before the job started, a libvirtd that lost it): it is
        made afresh, so that the new job starts from a target that reads as zeros."""
        plan, o = j.plan, j.plan.options
        contexts = None
        state = live.state()
        busy = len(self._copying(plan.moves, state))
        for m in plan.moves:
            dev, dest = m.target_dev or "", self._dest_name(m)
            s = state.get(dev)
            if s is None:
                raise livemod.LiveError(instance=plan.uuid, reason=f"no disk {dev} runs")
            if dest in (s.source, s.mirror):
                continue  # pivoted already, or its copy runs (started before a kill)
            if s.mirror is not None:
                raise livemod.LiveError(
                    instance=plan.uuid,
                    reason=f"{dev} has another block job (into {s.mirror}); wait for it "
                    "or abort it (virsh blockjob --abort)",
                )
            if busy >= max(1, o.parallel):
                continue  # started once a running copy is ready (_converge)
            if m.name not in self._untouched:
                if live.has_job(dev):
                    raise livemod.LiveError(
                        instance=plan.uuid,
                        reason=f"{dev} has a block job the live XML does not show; abort it "
                        f"(virsh blockjob {plan.uuid} {dev} --abort) and resume",
                    )
                self.s.say(f"{plan.name}: {m.name}: no copy running; starting it afresh")
                self.storage.remove(m.copy_dest, ours=True)
                self.storage.create(m.copy_dest, m.virtual_size, sparse_lv=o.sparse_lvs)
            if contexts is None:
                contexts = self.storage.domain_contexts(j.original_xml, plan, resolve=True)
            backend = self.storage.of(m.copy_dest)
            disk_type, source, auth = backend.disk_xml(m.copy_dest, contexts.get(type(backend)))
            xml = livemod.disk_xml(disk_type, m.copy_dest.format, source, auth)
            live.copy(
                dev,
                xml,
                bandwidth=(o.bwlimit << 20) if o.bwlimit else None,
                sync_writes=o.sync_writes,
            )
            self._untouched.discard(m.name)
            busy += 1
            self.s.progress.start(m.name, m.virtual_size)

    def _ready(self, j: Journal, domains: switch.Domains) -> None:
        plan = j.plan
        names = {m.target_dev: m.name for m in plan.moves}
        with self._live(plan.uuid) as live:
            # the copies not started yet (--parallel) start as others are ready; a copy
            # that is gone (libvirtd restarted and lost it) starts again
            self._converge(j, live, lambda dev, p: self.s.progress.update(names[dev], p))
        for m in plan.moves:
            self.s.progress.finish(m.name, True)

    def _pivot(self, j: Journal, domains: switch.Domains) -> None:
        plan = j.plan
        with self._live(plan.uuid) as live:
            # a copy lost since it was ready (libvirtd restarted, a target error) is
            # started again and waited for, as in the ready step
            self._converge(j, live)
            state = live.state()
            todo = self._unpivoted(plan.moves, state)
            for m in todo:
                s = state.get(m.target_dev or "")
                if s is None or s.ready != "yes":
                    raise livemod.LiveError(
                        instance=plan.uuid,
                        reason=f"the copy of {m.name} is not ready (live XML: {s})",
                    )
            paused = None
            if plan.options.verify_paused and todo:
                start = time.monotonic()
                was_running = live.is_running()
                if was_running:
                    live.suspend()
                try:
                    live.wait_synced([m.target_dev or "" for m in todo])
                    for m in todo:
                        try:
                            verify_disk(m, self.storage, self.s.runner, shared=True)
                        except Exception as exc:  # noqa: BLE001 - the guest resumes first
                            raise livemod.PausedVerifyFailed(
                                instance=plan.uuid, disk=m.name, reason=str(exc)
                            ) from exc
                    for m in todo:
                        self.pivot_seconds[m.name] = live.pivot(m.target_dev or "")
                finally:
                    if was_running:
                        try:
                            live.resume()
                        except livemod.LiveError:
                            LOG.error("cannot resume %s after --verify paused", plan.uuid)
                            self.s.say(
                                f"{plan.name}: the guest could not be resumed: virsh resume "
                                f"{plan.uuid}"
                            )
                    paused = time.monotonic() - start
            else:
                for m in todo:
                    self.pivot_seconds[m.name] = live.pivot(m.target_dev or "")
        for name, sec in self.pivot_seconds.items():
            self.s.say(f"{plan.name}: {name} pivoted in {sec * 1000:.0f} ms")
        if paused is not None:
            self.paused_seconds = paused
            ms = paused * 1000
            self.s.say(f"{plan.name}: the guest was paused {ms:.0f} ms (--verify paused)")


class _Locked:
    """instance_lock, with "locked" told as "another migration is in progress"."""

    def __init__(self, lock_path: str, uuid: str, who: str) -> None:
        self._cm = instance_lock(lock_path, uuid)
        self.who = who

    def __enter__(self) -> None:
        try:
            self._cm.__enter__()
        except errors.LockBusy as exc:
            raise MigrationRefused(
                instance=self.who,
                reason=f"another storagectl process (a migration?) holds its lock: {exc}",
            ) from exc

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


def _remove_source(loc: Location, storage: Storage) -> None:
    """Remove a source after the switch (``--delete-source``); idempotent."""
    storage.remove(loc)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
