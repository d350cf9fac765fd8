"""The same host checks on other hosts, over ssh, with host-key checking always ON.

The reference harness ran ssh with StrictHostKeyChecking=no; kit never does. An unknown or changed host key
is a fail whose fix is to verify the key and add it, not to turn checking off.

Transport: `ssh -o BatchMode=yes -o StrictHostKeyChecking=yes [-p PORT] HOST -- <remote_kit> check-host
--json ARGS`. The remote `--json` output is accepted in either shape:

- `{"hosts": {"<name>": [check, ...], ...}}`: every host's list, concatenated (the remote reports itself);
- `{"checks": [check, ...]}` (or a bare list of checks);

where a check is a dict with group, name, status (ok|warn|fail|skip), detail and optionally fix and data,
as `Check.to_dict()` writes it. Transport problems (ssh missing, refused, auth, host key, timeout, kit
missing there, bad JSON) become one `remote/ssh` fail naming the host; a reachable host also gets a
`remote/ssh` ok row, so the row is there in every host's column.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kit import __version__
from kit.checks import ORDER, Check

GROUP = "remote"
NAME = "ssh"
# Options a caller may not pass: each would weaken or turn off host-key checking.
_UNSAFE = re.compile(r"^(StrictHostKeyChecking|CheckHostIP|VerifyHostKeyDNS|KnownHostsCommand)\s*[= ]", re.I)


def parse_host(host: str) -> tuple[str, int | None]:
    """'user@host:port', 'host', '[v6]:port', 'user@[v6]' -> (ssh destination without port, port or None)."""
    user, sep, rest = host.rpartition("@")
    prefix = user + sep
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", rest)
    if m:
        return prefix + m.group(1), int(m.group(2)) if m.group(2) else None
    if rest.count(":") == 1:
        name, port = rest.split(":")
        if not port.isdigit():
            raise ValueError(f"bad port in host {host!r}: expected user@host:PORT with a number")
        return prefix + name, int(port)
    return prefix + rest, None  # a bare name, or an IPv6 address without port


def ssh_command(host: str, args: list[str], ssh_options: list[str] | None = None, remote_kit: str = "kit",
                connect_timeout: float = 15) -> list[str]:
    """The ssh argv. Our -o options come first: ssh keeps the first value of an option, so they win."""
    dest, port = parse_host(host)
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"ConnectTimeout={max(1, int(connect_timeout))}"]
    cmd += list(ssh_options or [])
    if port is not None:
        cmd += ["-p", str(port)]
    # The remote side runs the string through its shell: quote every word (remote_kit may be several words,
    # e.g. "/opt/venv/bin/python -m kit.cli").
    remote = shlex.split(remote_kit) + ["check-host", "--json", *args]
    return [*cmd, "--", dest, " ".join(shlex.quote(w) for w in remote)]


def check_remote(host: str, args: list[str], ssh_options: list[str] | None = None, remote_kit: str = "kit",
                 timeout: float = 60) -> list[Check]:
    """Run `kit check-host --json ARGS` on `host` over ssh and return its checks (a transport fail otherwise)."""

    def fail(detail: str, fix: str, **data: Any) -> list[Check]:
        return [Check(GROUP, NAME, "fail", f"{host}: {detail}", fix, {"host": host, **data})]

    try:
        dest, port = parse_host(host)
    except ValueError as e:
        return fail(str(e), "write the host as HOST, USER@HOST or USER@HOST:PORT")
    opts = list(ssh_options or [])
    for i, opt in enumerate(opts):
        value = opts[i + 1] if opt == "-o" and i + 1 < len(opts) else opt[2:] if opt.startswith("-o") else ""
        if _UNSAFE.match(value.strip()) and value.strip().replace(" ", "=").lower() != "stricthostkeychecking=yes":
            return fail(f"refusing ssh option {value!r}: kit keeps host-key checking on",
                        "remove that option and add the host's key to known_hosts (" + _keyscan(dest, port) + ")")

    cmd = ssh_command(host, args, opts, remote_kit, connect_timeout=min(timeout, 15))
    started = time.monotonic()
    try:
        proc = _run_ssh(cmd, timeout)
    except FileNotFoundError:
        return fail("the ssh client is not installed on this host",
                    "install it: `sudo apt-get install openssh-client` (or your OS's OpenSSH client)")
    except subprocess.TimeoutExpired:
        return fail(f"no answer within {timeout:g} s (ssh or the remote check-host hung)",
                    f"check that `{_ssh_hint(dest, port)} true` answers quickly; a slow host needs a longer timeout",
                    command=cmd)
    elapsed = time.monotonic() - started
    err = proc.stderr.strip()
    data = {"command": cmd, "exit_code": proc.returncode, "stderr": err[-1000:]}

    if proc.returncode == 255:
        return _transport_failure(host, dest, port, err, data)
    if proc.returncode == 127:
        return fail(f"`{remote_kit}` is not installed there (command not found: exit 127)",
                    f"install kit on {dest}, the same version as here ({__version__}), or pass the path of its kit "
                    "with --remote-kit", **data)
    if proc.returncode == 126:
        return fail(f"`{remote_kit}` is there but cannot be executed (exit 126)",
                    f"on {dest}: `chmod +x` it, or pass the right path with --remote-kit", **data)

    try:
        checks = parse_report(proc.stdout)
    except ValueError as e:
        head = proc.stdout.strip()[:200]
        tail = err.splitlines()[-1] if err else ""
        return fail(f"`{remote_kit} check-host --json` gave no usable JSON (exit {proc.returncode}): {e}"
                    + (f"; output starts {head!r}" if head else "") + (f"; stderr: {tail}" if tail else ""),
                    f"run `{_ssh_hint(dest, port)} {remote_kit} check-host --json` to see; install the same kit version "
                    f"there as here ({__version__})", **data)
    ok = Check(GROUP, NAME, "ok", f"reached {host} in {elapsed:.1f} s", data={"host": host, "seconds": elapsed})
    return [ok, *checks]


_running: set[subprocess.Popen] = set()  # the ssh processes of check_remotes' threads, while they run
_running_lock = threading.Lock()
_stopping = threading.Event()  # check_remotes was stopped: an ssh that starts now is killed at once


def _run_ssh(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, timeout=timeout), with the process listed in `_running`, so that an
    interrupted check-host ends it instead of waiting for its timeout."""
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:  # fmt: skip
        with _running_lock:
            _running.add(proc)
            if _stopping.is_set():
                proc.kill()
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        finally:
            with _running_lock:
                _running.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def check_remotes(hosts: list[str], args: list[str], ssh_options: list[str] | None = None,
                  remote_kit: str = "kit", timeout: float = 60) -> dict[str, list[Check]]:
    """Every host at once (a column each in the table); a slow host costs its own timeout, not the sum. Stopped
    (Ctrl-C, SIGTERM), every ssh still running is killed, so no thread keeps the command waiting for its timeout."""
    _stopping.clear()
    pool = ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts))))
    try:
        futures = {h: pool.submit(check_remote, h, args, ssh_options, remote_kit, timeout) for h in hosts}
        return {h: f.result() for h, f in futures.items()}
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        with _running_lock:
            _stopping.set()
            running = list(_running)
        for proc in running:
            proc.kill()
        raise
    finally:
        pool.shutdown(wait=True)


def parse_report(text: str) -> list[Check]:
    """The remote's `check-host --json` output -> checks (either documented shape). ValueError says why not."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(doc, dict) and isinstance(doc.get("hosts"), dict):
        items = [c for checks in doc["hosts"].values() for c in (checks or [])]
    elif isinstance(doc, dict) and isinstance(doc.get("checks"), list):
        items = doc["checks"]
    elif isinstance(doc, list):
        items = doc
    else:
        raise ValueError("expected an object with 'hosts' (name -> checks) or 'checks' (a list)")
    out = []
    for i, c in enumerate(items):
        if not isinstance(c, dict) or not {"group", "name", "status", "detail"} <= c.keys():
            raise ValueError(f"check {i} lacks group/name/status/detail: {str(c)[:100]}")
        if c["status"] not in ORDER:
            raise ValueError(f"check {i} ({c['group']}/{c['name']}) has unknown status {c['status']!r}")
        out.append(Check(str(c["group"]), str(c["name"]), c["status"], str(c["detail"]), str(c.get("fix") or ""),
                         dict(c.get("data") or {})))
    return out


def _ssh_hint(dest: str, port: int | None) -> str:
    """The command a user types (plain ssh does not read HOST:PORT)."""
    return f"ssh -p {port} {dest}" if port else f"ssh {dest}"


def _keyscan(dest: str, port: int | None) -> str:
    name = dest.rpartition("@")[2]
    entry = f"[{name}]:{port}" if port else name
    p = f"-p {port} " if port else ""
    return (f"verify the fingerprint with the host's admin (on {name}: `ssh-keygen -lf "
            f"/etc/ssh/ssh_host_ed25519_key.pub`), compare with `ssh-keyscan {p}{name} | ssh-keygen -lf -`, then add "
            f"it: `ssh-keyscan {p}{name} >> ~/.ssh/known_hosts` (entry {entry}); never turn host-key checking off")


def _transport_failure(host: str, dest: str, port: int | None, err: str, data: dict[str, Any]) -> list[Check]:
    """ssh's exit 255: read its message to say which of the usual problems it is."""
    name = dest.rpartition("@")[2]
    where = f"{name}:{port or 22}"
    last = err.splitlines()[-1] if err else "(ssh printed nothing)"

    def fail(detail: str, fix: str) -> list[Check]:
        return [Check(GROUP, NAME, "fail", f"{host}: {detail}", fix, {"host": host, **data})]

    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in err or ("Host key for" in err and "has changed" in err):
        entry = f"[{name}]:{port}" if port else name
        return fail("its host key has CHANGED since it was recorded (a reinstalled host, or someone in between)",
                    f"confirm the new key with the host's admin before anything else; then `ssh-keygen -R '{entry}'` "
                    "and add the new key: " + _keyscan(dest, port))
    if "Host key verification failed" in err or "host key is known" in err:
        return fail("its host key is not in known_hosts, and kit keeps host-key checking on", _keyscan(dest, port))
    if "Could not resolve hostname" in err or "Name or service not known" in err:
        return fail(f"cannot resolve the name {name}", "check the spelling, DNS, /etc/hosts or ~/.ssh/config")
    if "Connection refused" in err:
        return fail(f"connection refused at {where}: no sshd listens there",
                    f"start sshd on {name} (`sudo systemctl start ssh`), or give the right port as {dest}:PORT")
    if "timed out" in err.lower():
        return fail(f"connection to {where} timed out",
                    "check that the host is up and that a firewall lets ssh through to that port")
    if "No route to host" in err or "Network is unreachable" in err:
        return fail(f"no route to {where}", "check the host's address and the network between the two")
    if "Permission denied" in err or "Too many authentication failures" in err:
        return fail(f"authentication failed at {where} ({last})",
                    f"install your public key there (`ssh-copy-id {'-p ' + str(port) + ' ' if port else ''}{dest}`), "
                    "or pass the key with --ssh-option='-i KEY'; kit runs ssh in batch mode (no password prompts)")
    return fail(f"ssh failed (exit 255): {last}", f"run `{_ssh_hint(dest, port)} true` by hand to see why")
