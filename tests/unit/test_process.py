from __future__ import annotations

import pytest
from oslo_concurrency import processutils

from storagectl import errors
from storagectl.host.process import Runner, mask_argv
from tests.env.procs import alive


class Recorder:
    """A fake executor: records calls, answers from a dict keyed by argv prefix."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, *argv, **kwargs):
        self.calls.append((argv, kwargs))
        for prefix, answer in self.answers.items():
            if argv[: len(prefix)] == prefix:
                if isinstance(answer, Exception):
                    raise answer
                return answer
        raise AssertionError(f"unexpected command {argv}")


def test_run_returns_output_and_passes_timeout_and_codes():
    fake = Recorder({("qemu-img", "info"): ('{"format": "raw"}', "")})
    result = Runner(fake, default_timeout=7).run("qemu-img", "info", "-f", "raw", "/x")
    assert result.stdout == '{"format": "raw"}'
    assert result.exit_code == 0
    argv, kwargs = fake.calls[0]
    assert argv == ("qemu-img", "info", "-f", "raw", "/x")
    assert kwargs["timeout"] == 7 and kwargs["check_exit_code"] == [0]


def test_failure_becomes_command_failed_with_masked_argv_and_last_stderr_line():
    exc = processutils.ProcessExecutionError(
        stdout="",
        stderr="warning: x\nrbd: error opening pool 'vms'\n",
        exit_code=2,
        cmd="rbd",
    )
    fake = Recorder({("rbd",): exc})
    with pytest.raises(errors.CommandFailed) as info:
        Runner(fake).run("rbd", "--key", "AQBsecret", "ls", "vms")
    err = info.value
    assert err.exit_code_ == 2
    assert "error opening pool 'vms'" in str(err)
    assert "AQBsecret" not in str(err) and "***" in str(err)


def test_timeout_becomes_command_timeout():
    import subprocess

    fake = Recorder({("sleep",): subprocess.TimeoutExpired("sleep", 1)})
    with pytest.raises(errors.CommandTimeout) as info:
        Runner(fake).run("sleep", "10", timeout=1)
    assert "sleep 10" in str(info.value)


def test_missing_program_is_reported_by_name():
    with pytest.raises(errors.CommandNotFound) as info:
        Runner().run("storagectl-no-such-tool", "--version")
    assert "storagectl-no-such-tool" in str(info.value)


def test_real_executor_runs_and_checks_exit_status():
    runner = Runner()
    assert runner.run("sh", "-c", "echo hi").stdout == "hi\n"
    with pytest.raises(errors.CommandFailed) as info:
        runner.run("sh", "-c", "echo boom >&2; exit 3")
    assert info.value.exit_code_ == 3 and "boom" in str(info.value)
    assert runner.run("sh", "-c", "exit 3", ok_codes=(0, 3)).exit_code == 3


def test_mask_argv():
    assert mask_argv(["rbd", "--key", "s3cr3t"]) == ["rbd", "--key", "***"]
    assert mask_argv(["qemu-img", "info", "rbd:vms/x:id=a:key=K:conf=/c"]) == [
        "qemu-img",
        "info",
        "rbd:vms/x:id=a:key=***:conf=/c",
    ]
    assert mask_argv(["echo", "password=hunter2"]) == ["echo", "password=***"]


def test_real_timeout_kills_the_child(tmp_path):
    import os
    import time

    pidfile = tmp_path / "pid"
    with pytest.raises(errors.CommandTimeout):
        Runner().run("sh", "-c", f"echo $$ > {pidfile}; exec sleep 30", timeout=1)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            raise AssertionError("the timed-out child is still running")
        time.sleep(0.05)


def test_stream_delivers_carriage_return_progress_lines_and_checks_status():
    seen = []
    res = Runner().stream(
        "sh",
        "-c",
        r"printf '    (0.00/100%%)\r    (50.00/100%%)\r'; "
        r"printf '    (100.00/100%%)\n'; echo warn >&2",
        on_line=seen.append,
    )
    assert [s.strip() for s in seen] == ["(0.00/100%)", "(50.00/100%)", "(100.00/100%)"]
    assert res.exit_code == 0 and res.stderr == "warn"
    with pytest.raises(errors.CommandFailed) as info:
        Runner().stream("sh", "-c", "echo nope >&2; exit 4", on_line=seen.append)
    assert info.value.exit_code_ == 4 and "nope" in str(info.value)


def test_stream_timeout_kills_and_raises():
    import time

    start = time.monotonic()
    with pytest.raises(errors.CommandTimeout):
        Runner().stream("sleep", "30", on_line=lambda _line: None, timeout=1)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("in_thread", [False, True])
def test_a_streamed_child_dies_with_a_sigkilled_parent(tmp_path, in_thread):
    """storagectl SIGKILLed mid-copy takes its qemu-img with it (PR_SET_PDEATHSIG), also
    when the copy runs in a worker thread (parallel copies). ``sleep`` prints nothing, so
    it cannot die of a broken stdout pipe instead."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    pidfile = tmp_path / "pid"
    script = textwrap.dedent(f"""
        import threading
        from storagectl.host.process import Runner
        def copy():
            Runner().stream("sh", "-c", "echo $$ > {pidfile}; exec sleep 60",
                            on_line=print)
        if {in_thread}:
            t = threading.Thread(target=copy)
            t.start()
            t.join()
        else:
            copy()
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert parent.poll() is None and time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    child = int(pidfile.read_text())
    try:
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while alive(child):
            assert time.monotonic() < deadline, "the streamed child outlived its parent"
            time.sleep(0.05)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_stream_with_a_fake_executor_replays_stdout():
    fake = Recorder({("qemu-img",): ("    (0.00/100%)\r    (100.00/100%)\r\n", "")})
    seen = []
    Runner(fake).stream("qemu-img", "convert", "-p", on_line=seen.append)
    assert [s.strip() for s in seen] == ["(0.00/100%)", "(100.00/100%)"]


def test_extra_env_is_added_to_the_environment_not_substituted():
    out = Runner(env={"STORAGECTL_X": "1"}).run("sh", "-c", 'echo "$STORAGECTL_X:$PATH"').stdout
    x, path = out.strip().split(":", 1)
    assert x == "1" and "/bin" in path
