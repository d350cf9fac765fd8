"""`kit env`: a block to paste into a bug report (as `accelerate env` does).

Library versions come from installed package metadata, never from importing them: importing torch on a
host costs seconds and the host side must work without it. Every probe tolerates absence. The accelerators are
the vendor's (kit/vendors: `detect()` and its probe): its name, driver, toolkit and each device; on a host where
no vendor finds devices, why each registered one did not.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import sys
from typing import Any

import typer

from kit import __version__, vendors
from kit.checks.system import human, mem_total, os_info
from kit.run.revision import revision_text, source_revision  # noqa: F401 - kit env prints it

LIBRARIES = ("torch", "deepspeed", "transformers", "flash-attn", "docker", "typer", "rich")
DOCKER_TIMEOUT_S = 2


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"




def _registered() -> list[Any]:
    """Every registered vendor that loads (a broken package is left out of the report, not fatal)."""

    out = []
    for name in vendors.names():
        try:
            out.append(vendors.get(name))
        except Exception:  # noqa: BLE001 - `kit env` reports; it never fails on a plug-in
            continue
    return out


def vendor_libraries() -> list[str]:
    """The Python distributions the registered vendors read their devices through, once each, in their order."""
    out: list[str] = []
    for v in _registered():
        out += [lib for lib in getattr(v, "libraries", ()) if lib not in out]
    return out


def device_lines(vendor: Any = None, probe: Any = None) -> list[tuple[str, str]]:
    """The accelerators: the vendor of this host (or `vendor`), its driver, toolkit and devices; with none found,
    why each registered vendor found none."""

    if vendor is None:
        vendor, probe = vendors.detect()
    elif probe is None:
        probe = vendor.probe()
    word = getattr(vendor, "device_word", "device")
    replay = f" (replayed from {probe.replayed_from})" if getattr(probe, "replayed_from", None) else ""
    if vendor.name == vendors.FALLBACK:
        why = []
        for v in _registered():
            if v.name == vendors.FALLBACK:
                continue
            try:
                p = v.probe()
                why.append(f"{v.name}: {p.reason or 'no devices'}")
            except Exception as e:  # noqa: BLE001 - a vendor whose probe raises is reported with its error
                why.append(f"{v.name}: {type(e).__name__}: {e}")
        return [("Accelerators", probe.reason or "none found: the ranks compute on the CPU"),
                *((f"  {w.split(':', 1)[0]}", w.split(": ", 1)[1]) for w in why)]  # fmt: skip
    rows = [("Accelerators", f"{vendor.title} ({vendor.name}){replay}")]
    toolkit = getattr(vendor, "toolkit_label", "") or f"{vendor.title} toolkit"
    if not probe.available:
        return [*rows, (f"{vendor.title} driver", f"{probe.driver or 'none'} ({probe.reason})"),
                (toolkit, "n/a"), (f"{word}s", "none")]  # fmt: skip
    rows += [(f"{vendor.title} driver", probe.driver or "not reported"),
             (toolkit, probe.toolkit or "not reported"), (f"{word}s", str(len(probe.devices)))]  # fmt: skip
    for d in probe.devices:
        mem = f", {d.memory_bytes / 1024**3:.0f} GiB" if d.memory_bytes else ""
        rows.append((f"  {word} {d.index}", f"{d.name or 'name not reported'}{mem}"))
    return rows


def _docker_engine() -> str:
    """The engine's version through the docker SDK, with a short timeout: a dead socket must not hang `kit env`."""
    try:
        import docker
    except ImportError:
        return "n/a (the docker package is not installed)"
    try:
        client = docker.from_env(timeout=DOCKER_TIMEOUT_S)
        try:
            v: dict[str, Any] = client.version()
        finally:
            client.close()
    except Exception as e:  # noqa: BLE001 - every way of not reaching an engine is "unreachable"
        return f"unreachable ({type(e).__name__})"
    return f"{v.get('Version', '?')} (API {v.get('ApiVersion', '?')})"


def env_block(vendor: Any = None) -> str:
    """The report as a fenced plain-text block, in a fixed order. `vendor`: whose devices to report (default: this
    host's, kit.vendors.detect(); KIT_VENDOR and each vendor's recording variable choose too)."""
    pretty, kernel = os_info()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem = mem_total()
    rows: list[tuple[str, str]] = [
        ("kit", __version__),
        ("kit source", revision_text(source_revision())),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("OS", f"{pretty}; kernel {kernel}" if pretty != "unknown" else platform.platform()),
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("Memory", human(mem) if mem else "unknown"),
        *((lib, _version(lib)) for lib in (*LIBRARIES[:4], *vendor_libraries(), *LIBRARIES[4:])),
        *device_lines(vendor),
        ("Docker engine", _docker_engine()),
    ]
    width = max(len(k) for k, _ in rows)
    body = "\n".join(f"- {k + ':':<{width + 1}} {v}" for k, v in rows)
    return f"```text\n{body}\n```"


def env() -> None:
    """Print the environment as a block to paste into a bug report.

    The accelerators are those of the vendor that finds devices here (KIT_VENDOR=NAME picks one).

    Example:

      kit env
    """
    typer.echo(env_block())
