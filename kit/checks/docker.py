"""Docker checks: the engine answers, its version, a way to hand the devices to containers, and (`--deep`) a real
throwaway container that lists the devices it was given.

Everything goes through the `docker` SDK (no shelled-out `docker` strings), with short timeouts, so a hung
daemon costs seconds, not minutes. Each failure names the socket or URL and says what to do. How a container
gets the devices is the accelerator vendor's to say (kit/vendors): its `docker_checks` rows (NVIDIA: the
container toolkit's runtime or CDI specs; AMD and Ascend: the device nodes and driver mounts), its
`container_access` for the throwaway container, and its `smoke` command, which lists the devices inside it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import uuid
from typing import Any

from kit import vendors
from kit.checks import Check
from kit.vendors.images import device_paths_check

GROUP = "docker"
# The reference host's engine (case-facts: the seed's A800 host) runs 20.10.18; older engines predate
# cgroup v2 support and behave differently with device requests.
MIN_VERSION = (20, 10)
REFERENCE_VERSION = "20.10.18"
# The label every throwaway container carries, so a leftover one can always be found and removed.
DEEP_LABEL = ("kit.check", "deep")
# The kit's image tag, once `kit build` exists; until then `--deep` needs an explicit image.
DEFAULT_IMAGE: str | None = None
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
MARKER = "kit-deep-check-ok"  # what the throwaway container prints when there are no devices to look for

SDK_FIX = "pip install 'docker>=7.1' (into the Python that runs kit: {python})"
START_FIX = (
    "start the daemon: `sudo systemctl start docker` (without systemd: `sudo dockerd &`); "
    "if it runs elsewhere, point DOCKER_HOST at its socket"
)
GROUP_FIX = (
    "add the user to the docker group: `sudo usermod -aG docker {user}`, then log in again (or `newgrp docker`)"
)


def docker_checks(
    deep: bool = False,
    image: str | None = None,
    base_url: str | None = None,
    gpus: int | None = None,
    *,
    cdi_root: str | os.PathLike[str] | None = None,
    timeout: float = 10,
    deep_timeout: float = 120,
    deep_command: list[str] | None = None,
    vendor: Any = None,
) -> list[Check]:
    """The docker group of `kit check-host`.

    `base_url` defaults to DOCKER_HOST or the local socket. `vendor` is the vendor whose devices the run uses
    (None: this host's, kit.vendors.detect()); `gpus` how many of its devices the host has (None: the vendor
    counts them its own way, or cannot); with 0, a missing way to hand devices in is a warn, since containers
    here run on the CPU. `cdi_root` is where the vendor looks up /dev, /etc and its driver's paths (tests point
    it at a tmp dir; None: "/"). `deep_command` replaces the command run in the throwaway container (default:
    the vendor's smoke command, with devices).
    """
    try:
        import docker  # noqa: F401  (the import is the check)
    except ImportError as e:
        return [
            Check(GROUP, "sdk", "fail", f"the docker Python SDK is not importable ({e})",
                  SDK_FIX.format(python=sys.executable))
        ]
    url = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET

    client, failure = _connect(base_url, url, timeout)
    if client is None:
        return [failure]
    try:
        try:
            info, version = client.info(), client.version()
        except Exception as e:  # noqa: BLE001 - an engine that answers ping but not info is still broken
            return [Check(GROUP, "engine", "fail", f"the Docker engine at {url} answered but `info` failed: {e}",
                          f"look at the daemon's log (`journalctl -u docker`); {START_FIX}", {"url": url})]
        if vendor is None:

            vendor = vendors.detect()[0]
        checks = [_engine(url, info, version), _version(version)]
        checks += vendor_rows(vendor, info, gpus, cdi_root)
        checks.append(_disk(info, url))
        if deep:
            if gpus is None:  # the vendor's own count, where its runtime row made one
                gpus = next((c.data["gpus"] for c in checks if isinstance(c.data.get("gpus"), int)), 0)
            checks.append(_deep(client, image or DEFAULT_IMAGE, vendor, gpus, deep_timeout, deep_command))
        else:
            checks.append(Check(GROUP, "container", "skip", "not started (pass --deep to start a throwaway container)"))
        return checks
    finally:
        client.close()


def _connect(base_url: str | None, url: str, timeout: float) -> tuple[Any, Check]:
    """A client that has answered a ping, or the failure that says why not (not running vs permission)."""
    import docker

    try:
        client = docker.DockerClient(base_url=base_url, timeout=timeout) if base_url else docker.from_env(timeout=timeout)
        client.ping()
        return client, Check(GROUP, "engine", "ok", url)
    except Exception as e:  # noqa: BLE001 - every way of not reaching the engine becomes one verdict
        return None, _unreachable(url, e)


def _unreachable(url: str, error: BaseException) -> Check:
    """Tell 'not running' from 'not allowed': their fixes differ.

    The detail names the engine; data["reason"] says why without naming it again, for a caller that already has
    (`kit run`'s "node 0 (a): cannot reach the Docker engine at ssh://a: REASON")."""
    text = _error_text(error)
    path = url[len("unix://"):] if url.startswith("unix://") else None
    user = _user()

    def fail(detail: str, reason: str, fix: str) -> Check:
        return Check(GROUP, "engine", "fail", detail, fix, {"url": url, "error": text[-500:], "reason": reason})

    if "Permission denied" in text or "PermissionError" in text or (
        path and os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK)
    ):
        return fail(f"permission denied on the Docker socket {path or url} for user {user}",
                    f"permission denied for user {user}", GROUP_FIX.format(user=user))
    if path and not os.path.exists(path):
        return fail(f"the Docker engine is not running: no socket at {path}",
                    f"the Docker engine is not running: no socket at {path}", START_FIX)
    if "Connection refused" in text or "ConnectionRefusedError" in text:
        return fail(f"the Docker engine is not running: connection refused at {url}",
                    "the Docker engine is not running: connection refused", START_FIX)
    if "timed out" in text.lower() or "Timeout" in text:
        return fail(f"the Docker engine at {url} did not answer in time (hung daemon?)",
                    "no answer in time (hung daemon?)",
                    "restart it: `sudo systemctl restart docker`; its log: `journalctl -u docker`")
    last = text.strip().splitlines()[-1] if text.strip() else type(error).__name__
    return fail(f"cannot reach the Docker engine at {url}: {last[:300]}", last[:300], START_FIX)


def _error_text(error: BaseException) -> str:
    """The whole cause chain: the SDK wraps the socket error that tells what happened."""
    parts, seen, e = [], set(), error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER", "$USER")


def _engine(url: str, info: dict[str, Any], version: dict[str, Any]) -> Check:
    data = {
        "url": url,
        "server_version": version.get("Version"),
        "api_version": version.get("ApiVersion"),
        "storage_driver": info.get("Driver"),
        "cgroup_driver": info.get("CgroupDriver"),
        "cgroup_version": info.get("CgroupVersion"),
        "root_dir": info.get("DockerRootDir"),
        "runtimes": sorted(info.get("Runtimes") or {}),
        "default_runtime": info.get("DefaultRuntime"),
        "kernel": info.get("KernelVersion"),
        "os": info.get("OperatingSystem"),
    }
    detail = (f"reachable at {url} (storage driver {data['storage_driver']}, cgroup driver "
              f"{data['cgroup_driver']}, cgroup v{data['cgroup_version'] or '?'})")
    return Check(GROUP, "engine", "ok", detail, data=data)


def parse_version(text: str) -> tuple[int, ...]:
    """'20.10.24+dfsg1' -> (20, 10, 24); distribution suffixes are ignored."""
    m = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", text or "")
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


def _version(version: dict[str, Any]) -> Check:
    v = str(version.get("Version", ""))
    data = {"server_version": v, "api_version": version.get("ApiVersion"), "reference": REFERENCE_VERSION}
    parsed = parse_version(v)
    if not parsed:
        return Check(GROUP, "version", "warn", f"the engine reports no readable version ({v!r})",
                     f"check `docker version`; the reference host runs {REFERENCE_VERSION}", data)
    if parsed[:2] < MIN_VERSION:
        return Check(GROUP, "version", "warn",
                     f"Docker {v} is older than 20.10 (the reference host runs {REFERENCE_VERSION})",
                     "upgrade Docker Engine to 20.10 or newer: https://docs.docker.com/engine/install/", data)
    return Check(GROUP, "version", "ok", f"Docker {v} (the reference host runs {REFERENCE_VERSION})", data=data)


def vendor_rows(vendor: Any, info: dict[str, Any], gpus: int | None, root: Any) -> list[Check]:
    """The vendor's own rows; for a vendor package without `docker_checks` (written before it existed), whether the
    device nodes and driver mounts its `container_access` names are on this host."""
    rows = getattr(vendor, "docker_checks", None)
    if rows is not None:
        return rows(info, gpus, root)
    from pathlib import Path


    access = vendor.container_access(gpus or 0)
    if not (access.devices or access.volumes):
        return [Check(GROUP, "devices", "skip", f"the {vendor.title} vendor package has no Docker checks "
                      "(`docker_checks`): how a container gets its devices is not checked here")]  # fmt: skip
    fix = f"the {vendor.title} driver creates them: see its vendor package's documentation"
    return [device_paths_check(vendor, access, gpus, Path(root) if root is not None else Path("/"), fix, "devices")]


def _disk(info: dict[str, Any], url: str) -> Check:
    """Free space where images and containers live: the kit's image is tens of GB."""
    root = info.get("DockerRootDir") or ""
    local = url.startswith("unix://") or url.startswith("npipe://")
    if not root or not local:
        return Check(GROUP, "disk", "skip", f"Docker's root dir {root or '?'} is not on this host ({url})")
    try:
        du = shutil.disk_usage(root)
    except OSError as e:
        return Check(GROUP, "disk", "skip", f"cannot read free space under {root}: {e}", data={"root_dir": root})
    gib = 1024**3
    data = {"root_dir": root, "free_bytes": du.free, "total_bytes": du.total}
    return Check(GROUP, "disk", "ok", f"{du.free / gib:.1f} GiB free of {du.total / gib:.1f} GiB under {root}",
                 data=data)


def _sdk_kwargs(access: Any) -> dict[str, Any]:
    """A vendor's ContainerAccess as `containers.create` keyword arguments."""
    import docker

    kw: dict[str, Any] = {}
    if access.device_requests:
        kw["device_requests"] = [docker.types.DeviceRequest(**r) for r in access.device_requests]
    if access.devices:
        kw["devices"] = list(access.devices)
    if access.volumes:  # bind mounts, never volumes: a missing host path is refused, not created
        kw["mounts"] = [docker.types.Mount(c, h, type="bind", read_only=True) for h, c in access.volumes.items()]
    if access.environment:
        kw["environment"] = dict(access.environment)
    if access.group_add:
        kw["group_add"] = list(access.group_add)
    return kw


def _deep(client: Any, image: str | None, vendor: Any, gpus: int, timeout: float, command: list[str] | None) -> Check:
    """Start a throwaway container given the devices as the vendor hands them in, and list them from inside it (the
    vendor's smoke command); the container is always removed."""
    import docker

    host = socket.gethostname()
    smoke = vendor.smoke() if gpus > 0 and hasattr(vendor, "smoke") else None
    word = getattr(vendor, "device_word", "device")
    if not image:
        tool = f" (with {word}s: one with `{' '.join(smoke.command)}`)" if smoke else ""
        return Check(GROUP, "container", "fail", "--deep needs an image to start and the kit's image is not known",
                     f"pass --deep-image IMAGE, an image on this host{tool}")
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return Check(GROUP, "container", "fail", f"image {image} is not on host {host}",
                     f"`docker pull {image}` (or build it), or pass another --deep-image", {"image": image})
    except Exception as e:  # noqa: BLE001
        return Check(GROUP, "container", "fail", f"cannot inspect image {image} on host {host}: {e}",
                     "look at the daemon's log (`journalctl -u docker`)", {"image": image})

    if command is None:
        command = list(smoke.command) if smoke else ["echo", MARKER]
    kwargs = _sdk_kwargs(vendor.container_access(gpus)) if gpus > 0 else {}
    name = f"kit-check-deep-{uuid.uuid4().hex[:12]}"
    data: dict[str, Any] = {"image": image, "command": command, "container": name, "gpus_expected": gpus}
    container = None
    try:
        container = client.containers.create(
            image, command, name=name, labels={DEEP_LABEL[0]: DEEP_LABEL[1]}, network_mode="none", **kwargs
        )
        container.start()
        try:
            status = container.wait(timeout=timeout)
        except Exception as e:  # noqa: BLE001 - the SDK raises a requests timeout here
            data["error"] = _error_text(e)[-300:]
            return Check(GROUP, "container", "fail",
                         f"the container from {image} did not finish within {timeout:g} s on host {host}",
                         f"run `docker run --rm {image} {' '.join(command)}` by hand to see where it hangs; an "
                         "overloaded engine needs a longer --deep timeout",
                         data)
        output = container.logs(stdout=True, stderr=True).decode(errors="replace").strip()
    except docker.errors.APIError as e:
        text = str(e.explanation or e)
        data["error"] = text
        fix = "look at the daemon's log (`journalctl -u docker`)"
        if smoke:  # the engine refused the devices, as asked: the vendor's way in is what to check first
            fix = f"{smoke.fix}; then {fix}"
        return Check(GROUP, "container", "fail", f"cannot start a container from {image} on host {host}: {text[:300]}",
                     fix, data)  # fmt: skip
    except Exception as e:  # noqa: BLE001
        data["error"] = _error_text(e)[-300:]
        return Check(GROUP, "container", "fail", f"the throwaway container on host {host} failed: {e}",
                     "look at the daemon's log (`journalctl -u docker`)", data)
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - best effort; the label finds leftovers
                data["leftover"] = name

    code = status.get("StatusCode")
    data.update(exit_code=code, output=output[-2000:])
    if code != 0:
        fix = smoke.fix if smoke else f"run the same command by hand in {image} to see why"
        return Check(GROUP, "container", "fail",
                     f"`{' '.join(command)}` in {image} exited {code}: {output[-300:] or '(no output)'}", fix, data)
    if smoke and command == smoke.command:
        seen = smoke.seen(output)
        data["gpus_seen"] = len(seen)
        if len(seen) < gpus:
            return Check(GROUP, "container", "fail",
                         f"the container saw {len(seen)} of this host's {gpus} {word}(s): {output[-300:]}",
                         smoke.fix, data)  # fmt: skip
        names = sorted(set(seen))
        return Check(GROUP, "container", "ok", f"a container from {image} sees {len(seen)} {word}(s): {', '.join(names)}",
                     data=data)  # fmt: skip
    return Check(GROUP, "container", "ok",
                 f"a container from {image} ran `{' '.join(command)}` and printed {output[-200:]!r}", data=data)
