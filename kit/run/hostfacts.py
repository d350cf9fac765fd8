"""The host a run ran on, as `kit run` records it in environment.json and `kit submit` reads it back.

The accelerators, their driver and toolkit through the host's vendor (kit/vendors), the CPU, memory, OS and kernel from
/proc, InfiniBand ports from /sys: the facts a system description is filled from, taken when the run ran rather
than typed in later.
"""

from __future__ import annotations

import getpass
import os
import platform
import socket
import sys
from typing import Any

from kit import __version__, vendors
from kit.checks.system import cpu_info, ib_ports, mem_total, os_info


def device_facts(vendor: Any = None) -> dict[str, Any]:
    """What the host's accelerator vendor found (kit/vendors: its Probe, as plain data): the vendor, driver and
    toolkit, each device (name, memory, links up), or why none; `replayed_from` marks a recording, never a host."""
    if vendor is None:
        _, probe = vendors.detect()
    else:
        probe = vendor.probe()
    return probe.to_dict()


def accelerators(environment: dict[str, Any]) -> dict[str, Any]:
    """environment.json's device facts (`host.accelerators`); of older runs' `host.gpus`, what every vendor's probe
    has in common (each device's name and memory, the driver)."""
    host = environment.get("host") if isinstance(environment.get("host"), dict) else {}
    acc = host.get("accelerators")
    if isinstance(acc, dict):
        return acc
    old = host.get("gpus")
    if not isinstance(old, dict):
        return {}
    devices = [{"index": d.get("index"), "name": d.get("name"), "memory_bytes": d.get("memory_bytes")}
               for d in old.get("devices") or [] if isinstance(d, dict)]  # fmt: skip
    return {"vendor": None, "available": old.get("available"), "reason": old.get("reason"), "driver": old.get("driver"),
            "devices": devices, **({"replayed_from": old["replayed_from"]} if old.get("replayed_from") else {})}


def host_facts(vendor: Any = None) -> dict[str, Any]:
    cpu_model, cores = cpu_info()
    pretty, kernel = os_info()
    return {
        "hostname": socket.gethostname(),
        "user": getpass.getuser(),
        "os": platform.platform(),
        "os_name": pretty,
        "kernel": kernel,
        "python": sys.version.split()[0],
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "cpus_usable": cores,
        "memory_bytes": mem_total(),
        "accelerators": device_facts(vendor),
        "infiniband": ib_ports(),
        "kit_version": __version__,
    }
