"""The power-loss matrix (issue #19), beside the kill -9 matrix of the other tiers.

For each journal boundary after which storagectl relies on bytes being on the disk
(copy done, verify done, switched, cleanup done) tests/env/powercut.py migrates two
instances (qcow2 -> flat file, qcow2 -> LVM) inside a virtme-ng guest, killed at that
boundary (STORAGECTL_FAULT) - eight instances in one guest, so that the whole matrix
costs one power cut and two boots - then cuts the guest's power (SIGKILL of its QEMU
while the guest keeps every unflushed page dirty), boots a fresh guest on the same disk
images, runs e2fsck and checks:

* the harness really loses unflushed data (the negative controls) and keeps flushed
  data (the positive control) - otherwise the matrix would prove nothing;
* each instance is complete, byte-identical (``qemu-img compare``) to a reference taken
  before the move, on its old layout (qcow2) or on its new one (raw file / LV) - which
  one follows from the boundary: before the switch the old, after it the new;
* audit reports the interrupted migration; ``migrate --resume`` (or ``--rollback``: each
  target gets both across the matrix, powercut.ACTIONS) succeeds and leaves the
  instance complete on the new (old) layout with no journal and no leftovers.

Runs on the host (it launches its own guests): ``scripts/run-tests.sh powerloss``.
About 10-15 minutes under TCG (two boots, libvirtd twice, 8 migrations, 8 resumes or
rollbacks). One cut for every boundary is weaker than one cut per boundary in one
respect only: the migrations killed later in the same guest commit ext4's journal
(every fsync does), so metadata an earlier one left unsynced may survive by their doing
(ext4's 5 s commit timer does that too); they never write back another file's or LV's
data, which is what this matrix is about (``python -m tests.env.powercut run BOUNDARY
WORKDIR`` runs one boundary alone).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.env.powercut import ACTIONS, BOUNDARIES, SRC_ENV, run_matrix

ROOT = Path(__file__).resolve().parents[2]
WORK_ENV = "STORAGECTL_POWERCUT_WORK"  # where the images and reports go


@pytest.fixture(scope="module")
def matrix() -> dict:
    """One run of the matrix: 8 instances, each killed at its boundary, one power cut,
    one check boot (the report is kept in build/powerloss/matrix/report.json)."""
    src = Path(os.environ[SRC_ENV]).resolve() if os.environ.get(SRC_ENV) else None
    work = Path(os.environ.get(WORK_ENV) or ROOT / "build" / "powerloss") / "matrix"
    report = run_matrix(BOUNDARIES, work, src=src)
    (work / "report.json").write_text(json.dumps(report, indent=1))
    if src is not None:  # the storagectl that ran in the guests is the one asked for
        for origin in (report["storagectl"], report["crash"]["storagectl"]):
            assert Path(origin).is_relative_to(src), origin
    return report


def test_the_cut_loses_what_was_not_flushed_and_keeps_what_was(matrix: dict) -> None:
    """The harness's own controls: without them the matrix would prove nothing."""
    fsck = matrix["setup"]["fsck"]
    assert fsck["exit"] in (0, 1), fsck  # 1: the journal replayed / errors corrected
    c = matrix["controls"]
    assert c["unsynced_file_lost"], f"a file written without fsync survived the cut: {c}"
    assert c["unsynced_lv_lost"], f"an LV written without a flush survived the cut: {c}"
    assert c["synced_intact"], f"an fsynced file did not survive the cut: {c}"
    killed = {
        (i["boundary"], i["kind"]): i["migrate"]["exit"] for i in matrix["crash"]["instances"]
    }
    assert killed == dict.fromkeys(ACTIONS, -9), matrix["crash"]["instances"]


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_power_cut_after(boundary: str, matrix: dict) -> None:
    failures = judge(boundary, [i for i in matrix["instances"] if i["boundary"] == boundary])
    assert not failures, "\n".join(failures)


def judge(boundary: str, instances: list[dict]) -> list[str]:
    """Every way the instances killed at ``boundary`` break the promise, as sentences."""
    bad: list[str] = []
    if {i["kind"] for i in instances} != {"flat", "lvm"}:
        bad.append(f"expected a flat and an lvm instance at {boundary}: {instances}")
    expected_before = "old" if boundary in ("copy:after", "verify:after") else "new"
    for inst in instances:
        who = f"{inst['kind']} ({inst['action']} after the cut at {boundary})"
        before, after = inst["before"], inst["after"]
        if not before["identical"]:
            bad.append(
                f"{who}: after the power cut the instance boots a disk that differs from "
                f"the reference: {before['path']} ({before['format']}): {before['compare']}"
            )
        if before["layout"] != expected_before:
            bad.append(f"{who}: on the {before['layout']} layout, expected {expected_before}")
        if before["journal"] is not None and not inst["audit"]["interrupted"]:
            bad.append(f"{who}: audit does not report the interrupted migration")
        if inst["action_result"]["exit"] != 0:
            bad.append(f"{who}: migrate --{inst['action']} failed: {inst['action_result']}")
        want = "new" if inst["action"] == "resume" else "old"
        if not after["identical"] or after["layout"] != want:
            bad.append(
                f"{who}: afterwards on the {after['layout']} layout (want {want}), "
                f"identical={after['identical']}: {after['compare']}"
            )
        if after["journal"] is not None:
            bad.append(f"{who}: the journal is still there after --{inst['action']}")
        leftovers = [f for f in after["files"] if f.endswith(".migrating") or f.startswith(".")]
        if leftovers:
            bad.append(f"{who}: leftovers {leftovers}")
        if inst["kind"] == "lvm" and inst["action"] == "rollback" and after["lvs"]:
            bad.append(f"{who}: the target LV survived the rollback: {after['lvs']}")
    return bad
