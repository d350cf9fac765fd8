"""`kit check-host`: can each host run the case, and if not, what exactly to do about it.

Every check answers ok / warn / fail (or skip) with its reading and, for warn and fail, the exact fix. The
exit code says whether the hosts are ready: 0 when nothing fails, 1 otherwise. `--json` prints the same
results for automation.

Extension points (the Docker and remote-host checks live in their own modules, kit/checks/docker.py and
kit/checks/remote.py):

- The device and driver rows come from the vendor that owns the config's device (kit/vendors: NVIDIA through
  NVML, AMD through amdsmi, Ascend through npu-smi, a registered vendor package, or the CPU), in its own words.
- `extra_checks`: a list of callables `fn(ctx: CheckContext) -> list[Check]`, run on this host after the device
  and driver checks, in order. `ctx.checks` holds the checks made so far, `ctx.vendor` and `ctx.probe` the vendor
  and what it found, so a check can build on them. It starts with `docker_host_checks`, which imports kit.checks.docker lazily and
  calls its `docker_checks(deep=..., gpus=...)`; a kit without that module shows one `skip` row instead.
- Remote hosts (`--hosts h1,h2`): every host that is not this one is checked by
  `kit.checks.remote.check_remotes(hosts, argv)` (or `check_remote(host, argv)` per host), imported lazily;
  `argv = CheckArgs.remote_argv()` are the `kit check-host` options to run there with `--json`. Without that
  module, each remote host fails with "remote checks not available".

- A Slurm cluster (`--launcher slurm [--partition P] [--nodes N] [--native]`): kit/checks/slurm.py asks the
  cluster (client commands, controller, partition, GPUs per node, node count, pyxis and enroot unless
  --native), then the disk, data and weights checks run here, where the shared paths are seen. The GPU,
  driver, Docker and host-limit checks are left out: they describe the compute nodes, not this login host.
  The table has one column, `slurm` (`slurm:P` with --partition).

`--json` prints {"case", "config", "ready": bool, "status": {host: worst}, "hosts": {host: [check, ...]}}
(and "launcher": "slurm" with that launcher), a check being `Check.to_dict()`; kit/checks/remote.py reads
exactly that from the remote host.
"""

from __future__ import annotations

import importlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kit import case as cases
from kit import vendors
from kit.checks import Check, worst
from kit.checks import data as data_checks
from kit.checks import slurm as slurm_checks
from kit.checks import system as system_checks
from kit.commands.data_verify import signals_as_interrupts
from kit.run.guard import Stop
from kit.run.guard import exit_code as interrupted_code


@dataclass
class CheckArgs:
    """What was asked, in a form that travels to another host."""

    case: str = field(default_factory=lambda: cases.only().name)  # the only case registered, unless named
    config: str = field(default_factory=lambda: cases.only().config.default_for(1, None))
    data: str | None = None
    models: str | None = None
    results: str = "runs"
    nodes: int = 1
    deep: bool = False
    deep_image: str | None = None
    docker_host: str | None = None  # this host's engine only: another host checks its own
    ssh_options: list[str] = field(default_factory=list)
    remote_kit: str = "kit"
    launcher: str = "local"  # local | slurm
    partition: str | None = None  # slurm only
    native: bool = False  # the run uses no containers: no Docker (local) or pyxis (slurm) checks

    def remote_argv(self) -> list[str]:
        """The options of the same check on another host (the caller adds `kit check-host --json`)."""
        out = ["--case", self.case, "--config", self.config, "--results", self.results, "--nodes", str(self.nodes)]
        out += ["--data", self.data] if self.data else []
        out += ["--models", self.models] if self.models else []
        out += ["--deep-image", self.deep_image] if self.deep_image else []
        out += ["--native"] if self.native else []
        return out + (["--deep"] if self.deep else [])


@dataclass
class CheckContext:
    """Everything a check may need about this host and the request."""

    args: CheckArgs
    cfg: Any
    root: str = "/"
    checks: list[Check] = field(default_factory=list)
    vendor: Any = None  # the vendor whose devices the config uses (kit/vendors)
    probe: Any = None  # what it found here


def docker_host_checks(ctx: CheckContext) -> list[Check]:
    """kit.checks.docker on this host, told how many devices the vendor found."""
    if ctx.args.native:
        return [Check("docker", "docker", "skip", "--native: the run uses this host's Python, no container")]
    try:
        docker = importlib.import_module("kit.checks.docker")
    except ModuleNotFoundError as e:
        if e.name != "kit.checks.docker":
            raise
        return [Check("docker", "docker", "skip", "Docker checks are not part of this kit yet")]
    probe = ctx.probe
    count = len(probe.devices) if probe is not None and probe.available else None  # None: the library did not answer
    return docker.docker_checks(
        deep=ctx.args.deep, image=ctx.args.deep_image, base_url=ctx.args.docker_host, gpus=count, vendor=ctx.vendor
    )


extra_checks: list[Callable[[CheckContext], list[Check]]] = [docker_host_checks]

LAUNCHERS = ("local", "slurm")

GLYPHS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "bold red"), "skip": ("-", "dim")}
LOCAL_NAMES = {"localhost", "127.0.0.1", "local"}


# ---------------------------------------------------------------- running the checks


def _guard(group: str, name: str, fn: Callable[[], list[Check]]) -> list[Check]:
    """A check that crashes becomes a failing row, so one bug does not hide the other answers."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - reported, not swallowed
        return [Check(group, name, "fail", f"the check itself failed: {type(e).__name__}: {e}",
                      "report this with the output of `kit env`")]


def device_checks(cfg: Any, vendor: Any = None) -> tuple[list[Check], Any, Any]:
    """The devices and their driver, asked of the vendor that owns the config's device (else this host's vendor),
    each fix in that vendor's words; (rows, vendor, probe)."""
    vendor = vendor or vendors.for_config(cfg.device)
    probe = vendor.probe()
    word = vendor.device_word
    checks = _guard("gpu", f"{word}s", lambda: vendor.host_checks(probe, cfg.gpus_per_node, cfg.device))
    if str(cfg.device).lower() != "cpu":
        checks += _guard("driver", "driver", lambda: vendor.driver_checks(probe))
    return checks, vendor, probe


def run_checks(
    case: str, config: str | Any, data: Path | None, models: Path | None, results: Path, nodes: int,
    vendor: Any = None, root: str = "/", deep: bool = False, args: CheckArgs | None = None,
) -> list[Check]:
    """Every check on this host, in table order: GPUs, driver, (Docker), system, network, data."""
    c = cases.get(case)
    cfg = cases.load_config(c, config) if isinstance(config, str) else config
    args = args or CheckArgs(case, cfg.name if not isinstance(config, str) else config,
                             None if data is None else str(data), None if models is None else str(models),
                             str(results), nodes, deep)
    ctx = CheckContext(args, cfg, root)
    rows, ctx.vendor, ctx.probe = device_checks(cfg, vendor)
    ctx.checks += rows
    for fn in extra_checks:
        ctx.checks += _guard("extra", getattr(fn, "__name__", "extra"), lambda fn=fn: fn(ctx))
    ctx.checks += _guard("system", "system", lambda: system_checks.system_checks(cfg, nodes, data, Path(results), root))
    ctx.checks += _guard("data", "data", lambda: data_checks.data_checks(cfg, data, deep))
    ctx.checks += _guard("data", "weights", lambda: data_checks.model_checks(cfg, models))
    return ctx.checks


def remote_checks(hosts: list[str], args: CheckArgs) -> dict[str, list[Check]]:
    """kit.checks.remote over ssh (all hosts at once), or one failing row per host when it is not there."""
    try:
        remote = importlib.import_module("kit.checks.remote")
    except ModuleNotFoundError as e:
        if e.name != "kit.checks.remote":
            raise
        line = " ".join(["kit", "check-host", *args.remote_argv()])
        return {h: [Check("remote", "ssh", "fail", f"{h}: remote checks not available in this kit",
                          f"run `{line}` on {h} itself")] for h in hosts}
    argv = args.remote_argv()
    return remote.check_remotes(hosts, argv, ssh_options=args.ssh_options or None, remote_kit=args.remote_kit)


def slurm_host_checks(cfg: Any, args: CheckArgs, data: Path | None, models: Path | None, results: Path,
                      nodes: int) -> list[Check]:
    """`--launcher slurm`: the cluster's rows (kit.checks.slurm), then disk, data and weights as seen from here."""

    checks = _guard("slurm", "slurm", lambda: slurm_checks.slurm_checks(
        cfg, args.partition, nodes, containers=not args.native))
    checks += _guard("system", "disk", lambda: system_checks.disk_checks(cfg, data, Path(results)))
    checks += _guard("data", "data", lambda: data_checks.data_checks(cfg, data, args.deep))
    checks += _guard("data", "weights", lambda: data_checks.model_checks(cfg, models))
    return checks


def is_local(host: str) -> bool:
    return host in LOCAL_NAMES or host in {socket.gethostname(), socket.getfqdn()}


# ---------------------------------------------------------------- output


def render(host_results: dict[str, list[Check]], console: Console) -> None:
    """One table, a column per host (rows: checks), then the fixes of every warn and fail, grouped.

    Every detail is shown whole: a cell wraps at the console's width (a word longer than the column folds),
    it is never cut, since the reading is what the user acts on."""
    hosts = list(host_results)
    rows: list[tuple[str, str]] = []
    for checks in host_results.values():
        for c in checks:
            if (c.group, c.name) not in rows:
                rows.append((c.group, c.name))
    table = Table(title="kit check-host", show_lines=False)
    table.add_column("group", style="dim", no_wrap=True)
    table.add_column("check", no_wrap=True)
    for h in hosts:
        table.add_column(h, overflow="fold", ratio=1)
    index = {h: {(c.group, c.name): c for c in checks} for h, checks in host_results.items()}
    for key in rows:
        cells: list[Text | str] = []
        for h in hosts:
            c = index[h].get(key)
            if c is None:
                cells.append(Text(""))
                continue
            glyph, style = GLYPHS[c.status]
            cells.append(Text.assemble((glyph, style), " ", c.detail, overflow="fold"))
        table.add_row(key[0], key[1], *cells)
    console.print(table)

    grouped: dict[tuple[str, str, str, str, str], list[str]] = {}
    for h, checks in host_results.items():
        for c in checks:
            if c.status in ("warn", "fail"):
                grouped.setdefault((c.status, c.group, c.name, c.detail, c.fix), []).append(h)
    if grouped:
        console.print("\n[bold]To fix:[/]")
    for (status, _group, name, detail, fix), hs in sorted(grouped.items(), key=lambda kv: kv[0][0] != "fail"):
        glyph, style = GLYPHS[status]
        console.print(Text.assemble((f"{glyph} {name}", style), f" ({', '.join(hs)}): ", detail))
        if fix:
            console.print(Text.assemble("    fix: ", (fix, "bold")))
    for h, checks in host_results.items():
        verdict = worst(checks)
        n_fail = sum(c.status == "fail" for c in checks)
        n_warn = sum(c.status == "warn" for c in checks)
        word = "not ready" if verdict == "fail" else "ready"
        glyph, style = GLYPHS["fail" if verdict == "fail" else "ok"]
        console.print(Text.assemble((f"{glyph} {h}: {word}", style), f" ({n_fail} failing, {n_warn} warnings)"))


def as_json(host_results: dict[str, list[Check]]) -> dict[str, Any]:
    """{"ready": bool, "status": {host: worst}, "hosts": {host: [Check.to_dict(), ...]}}."""
    status = {h: worst(cs) for h, cs in host_results.items()}
    return {
        "ready": all(v != "fail" for v in status.values()),
        "status": status,
        "hosts": {h: [c.to_dict() for c in cs] for h, cs in host_results.items()},
    }


def exit_code(host_results: dict[str, list[Check]]) -> int:
    return 0 if all(worst(cs) != "fail" for cs in host_results.values()) else 1


# ---------------------------------------------------------------- the command


def check_host(
    case: str = typer.Option(None, "--case", help="The case to check for (default: the only one registered)."),
    config: str = typer.Option(None, "--config", help="Config name (its GPUs per node, batches, paths); default: the "
                               "case's reference config."),
    hosts: str = typer.Option(None, "--hosts", help="Comma-separated hosts to check over ssh (default: this host)."),
    data: Path = typer.Option(None, "--data", help="Data root in the real layout (skip: not checked)."),
    models: Path = typer.Option(None, "--models", help="Directory with the LLM and CLIP checkpoint directories."),
    results: Path = typer.Option(Path("runs"), "--results", help="Where run directories will be created (free disk)."),
    nodes: int = typer.Option(None, "--nodes", help="Nodes the run will use (default: the config's, or the --hosts count)."),
    deep: bool = typer.Option(
        False, "--deep", help="Parse the data's JSON files fully, check every image, and run a throwaway container."
    ),
    deep_image: str = typer.Option(None, "--deep-image", help="Image of the --deep container (a local image)."),
    docker_host: str = typer.Option(None, "--docker-host", help="Docker engine URL (default: the environment's)."),
    ssh_option: list[str] = typer.Option(None, "--ssh-option", help="Extra ssh argument for --hosts (repeatable)."),
    remote_kit: str = typer.Option("kit", "--remote-kit", help="The kit command on the remote hosts."),
    launcher: str = typer.Option(
        "local", "--launcher", help="How the run starts: local (this host, or --hosts over ssh) or slurm (a cluster)."
    ),
    partition: str = typer.Option(None, "--partition", help="Slurm partition (default: the cluster's default)."),
    native: bool = typer.Option(
        False, "--native", help="The run uses the hosts' own Python, no containers: no Docker or pyxis checks."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON (same content)."),
) -> None:
    """Check that each host can run the case, and say how to fix what cannot.

    Exit code 0 when nothing fails, 1 otherwise.

    Examples:

      kit check-host --config A800x1x8 --data /data/llava --models /models

      kit check-host --hosts node1,node2 --json

      kit check-host --launcher slurm --partition gpu --config A800x2x8 --data /shared/llava
    """
    console = Console()

    def usage(message: str) -> NoReturn:
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
        raise typer.Exit(2)

    if launcher not in LAUNCHERS:
        usage(f"unknown --launcher {launcher!r}; use one of: {', '.join(LAUNCHERS)}")
    if launcher == "slurm" and hosts:
        usage("--hosts is for --launcher local; with --launcher slurm the cluster picks the nodes (use --nodes "
              "and --partition)")
    if launcher != "slurm" and partition:
        usage("--partition is for --launcher slurm; add `--launcher slurm`")
    try:
        c = cases.only() if case is None else cases.get(case)
        case, config = c.name, config or c.config.default_for(1, None)
        cfg = cases.load_config(c, config)
    except (cases.UnknownCase, ValueError) as e:
        usage(str(e))
    names = [h.strip() for h in hosts.split(",") if h.strip()] if hosts else []
    nodes = nodes or max(cfg.nodes, len(names) or 1)
    args = CheckArgs(case, config, None if data is None else str(data), None if models is None else str(models),
                     str(results), nodes, deep, deep_image, docker_host, list(ssh_option or []), remote_kit,
                     launcher, partition, native)

    try:  # --deep decodes every image in worker processes: a signal stops them, says so, exits 128 + the signal
        with signals_as_interrupts():
            if launcher == "slurm":
                column = f"slurm:{partition}" if partition else "slurm"
                host_results = {column: slurm_host_checks(cfg, args, data, models, results, nodes)}
            else:
                local = [h for h in names if is_local(h)] if names else [socket.gethostname()]
                others = remote_checks([h for h in names if h not in local], args) if len(local) < len(names) else {}
                host_results = {
                    h: run_checks(case, cfg, data, models, results, nodes, deep=deep, args=args)
                    if h in local
                    else others[h]
                    for h in names or local
                }
    except KeyboardInterrupt as e:
        try:
            Console(stderr=True).print(f"[yellow]interrupted[/] by {e if isinstance(e, Stop) else 'SIGINT (Ctrl-C)'}: "
                                       "check-host stopped, and every worker with it", soft_wrap=True)  # fmt: skip
        except OSError:
            pass
        raise typer.Exit(interrupted_code(e, 130)) from None
    if json_out:
        out = {"case": case, "config": config, **({"launcher": launcher} if launcher != "local" else {}),
               **as_json(host_results)}
        typer.echo(json.dumps(out, indent=2, default=str))
    else:
        render(host_results, console)
    raise typer.Exit(exit_code(host_results))
