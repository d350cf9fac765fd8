"""The real services of `.ci/services.sh` (a Docker engine, a test image, an sshd on loopback), as the tests
see them: read from /tmp/kit-services.env (KIT_SERVICES_ENV). Absent services skip the tests with the reason,
except under KIT_REQUIRE_SERVICES=1 (CI), where they fail: CI must not pass by skipping.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

ENV_FILE = Path(os.environ.get("KIT_SERVICES_ENV", "/tmp/kit-services.env"))
HOW = ("run `sudo .ci/services.sh` first (it starts dockerd, builds the test image, an sshd and a Slurm cluster "
       "on loopback)")


def unavailable(reason: str) -> None:
    """Skip locally; fail in CI (KIT_REQUIRE_SERVICES=1)."""
    if os.environ.get("KIT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; KIT_REQUIRE_SERVICES=1 demands the services: {HOW}")
    pytest.skip(f"{reason}: {HOW}")


def services_env() -> dict[str, str]:
    """The KEY=VALUE exports that .ci/services.sh wrote."""
    if not ENV_FILE.is_file():
        unavailable(f"no {ENV_FILE}")
    env: dict[str, str] = {}
    for line in ENV_FILE.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            words = words[1:]
        for w in words:
            key, _, value = w.partition("=")
            env[key] = value
    return env


def docker_engine_env() -> dict[str, str]:
    """The services' env after checking that the engine answers and holds the test image."""
    import docker

    env = services_env()
    url = env.get("KIT_TEST_DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.DockerClient(base_url=url, timeout=5)
        client.ping()
        client.images.get(env["KIT_TEST_DOCKER_IMAGE"])
        client.close()
    except Exception as e:  # noqa: BLE001 - any failure means the engine cannot serve the tests
        unavailable(f"the Docker engine at {url} or the test image does not answer ({e})")
    return env
