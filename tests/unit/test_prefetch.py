"""The forked record reader: the same results as reading in-process, or none at all."""

from __future__ import annotations

import os
import pickle
import signal
from dataclasses import replace

import pytest

from storagectl import errors
from storagectl.host.config import load_nova_config
from storagectl.inspect import inspection
from storagectl.inspect.prefetch import RecordPrefetch
from storagectl.record import record as rec
from tests.unit.test_record import U, a_record

U2 = "5eed0001-0000-4000-8000-0000000000b2"
U3 = "5eed0001-0000-4000-8000-0000000000b3"


@pytest.fixture
def nova(tmp_path):
    instances = tmp_path / "instances"
    conf = tmp_path / "nova.conf"
    conf.write_text(f"[DEFAULT]\ninstances_path = {instances}\n")
    (instances / U).mkdir(parents=True)
    rec.write_record(instances / U, a_record())
    (instances / U2).mkdir()
    (instances / U2 / rec.RECORD_NAME).write_text("schema_version: 1\ninstance: [broken\n")
    (instances / U3).mkdir()  # no record
    (instances / "_base").mkdir()
    (instances / "locks").mkdir()
    return load_nova_config([conf])


def in_process(nova, uuid):
    return inspection._read(nova, uuid)  # what inspect_hosts gives the child to call


def fetch(nova, *uuids):
    with RecordPrefetch(lambda uuid: in_process(nova, uuid)) as pre:
        assert pre.pid
        for uuid in uuids:
            pre.want(uuid)
        return pre.results()


def test_the_child_reads_the_records_asked_for_as_the_parent_would(nova):
    got = fetch(nova, U, U2, U3, U, "_base", "../etc")
    assert sorted(got) == sorted([U, U2, U3])  # what is not a uuid is never read
    assert got[U] == in_process(nova, U) == a_record()
    assert got[U3] is None
    assert isinstance(got[U2], errors.RecordInvalid)
    assert str(got[U2]) == str(in_process(nova, U2))
    assert got[U2].path == in_process(nova, U2).path


def test_only_the_records_asked_for_are_read(nova):
    assert list(fetch(nova, U3)) == [U3]
    assert fetch(nova) == {}


def test_many_records_flow_through_the_pipes(nova, tmp_path):
    uuids = [f"5eed0002-0000-4000-8000-{i:012x}" for i in range(3000)]  # > a pipe buffer
    got = fetch(nova, *uuids, U)
    assert len(got) == 3001 and got[U] == a_record()
    assert all(got[u] is None for u in uuids)


def test_no_child_is_left_behind(nova):
    with RecordPrefetch(lambda uuid: in_process(nova, uuid)) as pre:
        pid = pre.pid
        pre.want(U)
        pre.results()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_a_scan_that_fails_kills_and_reaps_the_child(nova):
    with pytest.raises(RuntimeError), RecordPrefetch(lambda uuid: in_process(nova, uuid)) as pre:
        pid = pre.pid
        raise RuntimeError("the scan failed")
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_a_child_that_dies_means_no_results_not_wrong_ones(nova):
    with RecordPrefetch(lambda uuid: in_process(nova, uuid)) as pre:
        pre.want(U)
        os.kill(pre.pid, signal.SIGKILL)
        for _ in range(3000):  # the parent keeps scanning: sending to a dead child is fine
            pre.want(U2)
        assert pre.results() == {}


def test_errors_survive_the_pipe_with_their_fields():
    exc = errors.RecordInvalid(path="/i/storage.yaml", reason="field x: bad")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is errors.RecordInvalid
    assert (str(back), back.path, back.fields) == (str(exc), exc.path, exc.fields)


def test_records_survive_the_pipe_equal():
    record = replace(a_record(), retained_sources=({"disk": "disk", "path": "/x"},))
    assert pickle.loads(pickle.dumps(record)) == record
