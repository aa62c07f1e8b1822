"""Issue #12, items 8 and 9: a nova.conf or an instances_path storagectl cannot use is one
ConfigError naming the file (and the line, or the option and its value), never parser or
codec internals, and never "does not exist" for "permission denied"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storagectl import errors
from storagectl.host.config import check_instances_path, load_nova_config

REPO = Path(__file__).resolve().parents[2]
INTERNALS = ("\\x00", "codec", "0xff", "File contains", "Errno", "source=", "'\\n'", "b'")


def refusal(path: Path) -> str:
    with pytest.raises(errors.ConfigError) as exc:
        load_nova_config([path])
    message = str(exc.value)
    assert "\n" not in message and str(path) in message
    for internal in INTERNALS:
        assert internal not in message, message
    return message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"[DEFAULT]\nstate_path = /x\n\x00\x01\x02 binary\n", "line 3: binary data"),
        (b"[DEFAULT]\nstate_path = /x\n# caf\xff\n", "line 3: not UTF-8 text"),
        (b"\xff\xfe[\x00D\x00", "line 1: binary data"),
        (b"[DEFAULT\ninstances_path = /x\n", "line 1: a malformed [section] header"),
        (b"instances_path = /x\n", "line 1: an option before the first [section] header"),
        (b"[DEFAULT]\nuse_cow_images = true\nthis is not an option\n", "line 3: not a [section]"),
    ],
)
def test_garbage_nova_conf_is_one_line_naming_file_and_line(tmp_path, content, expected):
    conf = tmp_path / "nova.conf"
    conf.write_bytes(content)
    assert expected in refusal(conf)


def test_directory_as_nova_conf(tmp_path):
    assert "is a directory" in refusal(tmp_path)


def test_unreadable_nova_conf_is_permission_denied_not_missing(tmp_path):
    """As root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (setpriv), a nova.conf in a
    directory mode 0 cannot be reached: "Permission denied", not "no such file"."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "nova.conf").write_text("[DEFAULT]\ninstances_path = /tmp\n")
    locked.chmod(0)
    code = (
        "import sys\n"
        "from storagectl import errors\n"
        "from storagectl.host.config import load_nova_config\n"
        "try:\n"
        "    load_nova_config([sys.argv[1]])\n"
        "except errors.ConfigError as exc:\n"
        "    print(exc)\n"
    )
    res = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            sys.executable,
            "-c",
            code,
            str(locked / "nova.conf"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        cwd=REPO,
    )
    assert res.stdout.strip().endswith(f"{locked / 'nova.conf'}: Permission denied"), res


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("relative/instances", "instances_path = 'relative/instances' is not an absolute path"),
        ("", "instances_path is empty"),
        ("$state_path/x/..", None),  # absolute after substitution: accepted
    ],
)
def test_instances_path_must_be_absolute(tmp_path, value, expected):
    conf = tmp_path / "nova.conf"
    conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\ninstances_path = {value}\n")
    if expected is None:
        assert load_nova_config([conf]).instances_path == str(tmp_path)
        return
    message = refusal(conf)
    assert expected in message


def nova_with(tmp_path: Path, instances: Path):
    conf = tmp_path / "nova.conf"
    conf.write_text(f"[DEFAULT]\ninstances_path = {instances}\n")
    return load_nova_config([conf])


def test_missing_instances_path(tmp_path):
    with pytest.raises(errors.ConfigError) as exc:
        check_instances_path(nova_with(tmp_path, tmp_path / "nope"))
    assert f"instances_path = {tmp_path / 'nope'}: no such directory" in str(exc.value)


def test_instances_path_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(errors.ConfigError) as exc:
        check_instances_path(nova_with(tmp_path, tmp_path / "file" / "instances"))
    assert "a component of the path is not a directory" in str(exc.value)
    with pytest.raises(errors.ConfigError) as exc:
        check_instances_path(nova_with(tmp_path, tmp_path / "file"))
    assert f"instances_path = {tmp_path / 'file'}: not a directory" in str(exc.value)


def test_existing_instances_path_is_accepted(tmp_path):
    (tmp_path / "instances").mkdir()
    check_instances_path(nova_with(tmp_path, tmp_path / "instances"))
