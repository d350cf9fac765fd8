"""Remote checks over a real sshd on loopback (.ci/services.sh), host-key checking ON throughout.

The transport is tested with a stand-in remote command (a script printing check-host's JSON shape); one
test runs the real `kit check-host --json` there once that command exists.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kit.checks import Check
from kit.checks.remote import check_remote, check_remotes, parse_host, parse_report, ssh_command

from .services import services_env, unavailable

KIT = Path(sys.executable).with_name("kit")
REMOTE_KIT = str(KIT) if KIT.exists() else f"{sys.executable} -m kit.cli"


@pytest.fixture(scope="module")
def sshd() -> dict[str, str]:
    env = services_env()
    host, opts = env.get("KIT_TEST_SSH_HOST", ""), env.get("KIT_TEST_SSH_OPTIONS", "")
    dest, port = parse_host(host)
    proc = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5",
                           *shlex.split(opts), "-p", str(port), dest, "true"],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        unavailable(f"the test sshd at {host} does not answer ({proc.stderr.strip()[-200:]})")
    return env


def opts(env: dict[str, str]) -> list[str]:
    return shlex.split(env["KIT_TEST_SSH_OPTIONS"])


def stand_in(tmp_path: Path, body: str) -> str:
    """A remote 'kit': the remote side is this same machine, so a script in tmp_path runs there."""
    script = tmp_path / "fake-kit"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


REPORT = {"hosts": {"gpu-node-7": [
    {"group": "gpu", "name": "count", "status": "ok", "detail": "8 x NVIDIA H200", "fix": "", "data": {"n": 8}},
    {"group": "system", "name": "/dev/shm", "status": "fail", "detail": "64 MiB", "fix": "--shm-size=16g"},
]}}


def test_remote_checks_come_back_with_their_fields(sshd, tmp_path):
    out = tmp_path / "argv.json"
    kit = stand_in(tmp_path, f"python3 -c 'import json,sys; json.dump(sys.argv[1:], open(\"{out}\", \"w\"))' \"$@\"\n"
                             f"cat <<'JSON'\n{json.dumps(REPORT)}\nJSON\nexit 1\n")  # exit 1: a check failed
    checks = check_remote(sshd["KIT_TEST_SSH_HOST"], ["--deep", "--data", "/a dir/with space"], opts(sshd),
                          remote_kit=kit)
    assert (checks[0].group, checks[0].name, checks[0].status) == ("remote", "ssh", "ok")
    assert sshd["KIT_TEST_SSH_HOST"] in checks[0].detail
    assert checks[1:] == [Check("gpu", "count", "ok", "8 x NVIDIA H200", "", {"n": 8}),
                          Check("system", "/dev/shm", "fail", "64 MiB", "--shm-size=16g", {})]
    # The arguments arrive as words, spaces and all, after `check-host --json`.
    assert json.loads(out.read_text()) == ["check-host", "--json", "--deep", "--data", "/a dir/with space"]


def test_top_level_checks_shape_and_several_hosts_at_once(sshd, tmp_path):
    doc = {"checks": REPORT["hosts"]["gpu-node-7"]}
    kit = stand_in(tmp_path, f"cat <<'JSON'\n{json.dumps(doc)}\nJSON\n")
    host = sshd["KIT_TEST_SSH_HOST"]
    closed = f"root@127.0.0.1:{closed_port()}"
    columns = check_remotes([host, closed], [], opts(sshd), remote_kit=kit, timeout=30)
    assert [c.name for c in columns[host]] == ["ssh", "count", "/dev/shm"]
    assert [(c.name, c.status) for c in columns[closed]] == [("ssh", "fail")]


def test_real_check_host_over_ssh(sshd):
    probe = subprocess.run([*shlex.split(REMOTE_KIT), "check-host", "--help"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("check-host CLI not wired yet")
    checks = check_remote(sshd["KIT_TEST_SSH_HOST"], [], opts(sshd), remote_kit=REMOTE_KIT, timeout=120)
    assert checks[0].status == "ok", checks[0]
    assert len(checks) > 1 and all(c.status in {"ok", "warn", "fail", "skip"} for c in checks)


def test_unknown_host_key_fails_with_the_safe_fix(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    options = ["-o", f"UserKnownHostsFile={empty}", *opts(sshd)]  # ssh keeps the first value: ours
    [check] = check_remote(sshd["KIT_TEST_SSH_HOST"], [], options, remote_kit="true")
    assert check.status == "fail" and sshd["KIT_TEST_SSH_HOST"] in check.detail and "host key" in check.detail
    assert "ssh-keyscan -p " in check.fix and "ssh-keygen -lf" in check.fix
    assert "StrictHostKeyChecking=no" not in check.fix and "never turn host-key checking off" in check.fix


def test_changed_host_key_is_named_as_such(sshd, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    port = parse_host(sshd["KIT_TEST_SSH_HOST"])[1]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{port} " + " ".join((tmp_path / "other.pub").read_text().split()[:2]) + "\n")
    [check] = check_remote(sshd["KIT_TEST_SSH_HOST"], [], ["-o", f"UserKnownHostsFile={wrong}", *opts(sshd)],
                           remote_kit="true")
    assert check.status == "fail" and "CHANGED" in check.detail and "ssh-keygen -R" in check.fix


def test_options_that_weaken_host_key_checking_are_refused(sshd, tmp_path):
    for bad in (["-o", "StrictHostKeyChecking=no"], ["-oStrictHostKeyChecking=accept-new"]):
        [check] = check_remote(sshd["KIT_TEST_SSH_HOST"], [], [*bad, *opts(sshd)], remote_kit="true")
        assert check.status == "fail" and "refusing ssh option" in check.detail
    [ok, *_] = check_remote(sshd["KIT_TEST_SSH_HOST"], [], ["-o", "StrictHostKeyChecking=yes", *opts(sshd)],
                            remote_kit=stand_in(tmp_path, 'echo \'{"checks": []}\'\n'))
    assert ok.status == "ok"  # saying "yes" again is fine
    cmd = ssh_command("u@h:22", ["--x"])
    assert cmd[:5] == ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused(sshd):
    port = closed_port()
    [check] = check_remote(f"root@127.0.0.1:{port}", [], opts(sshd))
    assert check.status == "fail" and f"127.0.0.1:{port}" in check.detail and "refused" in check.detail
    assert "sshd" in check.fix


def test_auth_failure(sshd, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    known = sshd["KIT_TEST_SSH_KNOWN_HOSTS"]
    options = ["-o", f"UserKnownHostsFile={known}", "-o", "IdentitiesOnly=yes", "-i", str(tmp_path / "stranger")]
    [check] = check_remote(sshd["KIT_TEST_SSH_HOST"], [], options, remote_kit="true")
    assert check.status == "fail" and "authentication failed" in check.detail and "ssh-copy-id" in check.fix


def test_kit_missing_on_the_remote(sshd, tmp_path):
    missing = str(tmp_path / "no-such-kit")
    [check] = check_remote(sshd["KIT_TEST_SSH_HOST"], [], opts(sshd), remote_kit=missing)
    assert check.status == "fail" and missing in check.detail and "not installed" in check.detail
    assert "--remote-kit" in check.fix and check.data["exit_code"] == 127


def test_bad_json_and_timeout(sshd, tmp_path):
    garbage = stand_in(tmp_path, "echo 'Traceback: not json'\n")
    [check] = check_remote(sshd["KIT_TEST_SSH_HOST"], [], opts(sshd), remote_kit=garbage)
    assert check.status == "fail" and "no usable JSON" in check.detail and "Traceback" in check.detail
    assert "ssh -p " in check.fix  # a command the user can type (ssh does not read HOST:PORT)
    slow = stand_in(tmp_path, "sleep 30\n")
    [check] = check_remote(sshd["KIT_TEST_SSH_HOST"], [], opts(sshd), remote_kit=slow, timeout=3)
    assert check.status == "fail" and "no answer within 3 s" in check.detail


def test_ssh_client_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without ssh: what a bare host looks like
    [check] = check_remote("gpu-node-7", [])
    assert check.status == "fail" and "gpu-node-7" in check.detail and "openssh-client" in check.fix


@pytest.mark.parametrize("host, expected", [
    ("node", ("node", None)), ("root@node:2222", ("root@node", 2222)), ("[::1]:22", ("::1", 22)),
    ("u@[fe80::1]", ("u@fe80::1", None)), ("fe80::1", ("fe80::1", None)),
])
def test_parse_host(host, expected):
    assert parse_host(host) == expected


def test_parse_report_says_what_is_wrong():
    with pytest.raises(ValueError, match="not JSON"):
        parse_report("oops")
    with pytest.raises(ValueError, match="'hosts'"):
        parse_report('{"x": 1}')
    with pytest.raises(ValueError, match="unknown status 'great'"):
        parse_report('{"checks": [{"group": "g", "name": "n", "status": "great", "detail": ""}]}')


def test_services_file_is_read(sshd):
    assert os.path.exists(sshd["KIT_TEST_SSH_KEY"]) and os.path.exists(sshd["KIT_TEST_SSH_KNOWN_HOSTS"])
