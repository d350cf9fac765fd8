"""`kit configs`: a case's configs, and `kit configs new`, a config for another device derived from a shipped one.

The host knows no case: the case's plug-in derives the config (`Case.fit`, changing only keys its rules call free)
and says why each key changed; this module finds the device's memory (env/accelerators.toml's `memory_gib`, or
--memory-gib), writes the TOML, and checks it the way a run will: the case's own loader reads it back, and the rules'
check finds no fixed key broken that the reference keeps. `choose_config` is `kit run`'s pick of a shipped config
for the device this host has, or the `kit configs new` command that makes one.
"""

from __future__ import annotations

import math
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from kit import case as cases
from kit.case import rules as case_rules
from kit.case.choice import NoConfig, choose_config, command_line, default_config, device_row  # noqa: F401 - re-exported
from kit.errors import UsageError
from kit.tables import print_table, whole

console = Console()
err = Console(stderr=True)
GIB = 2**30
COMMENT_WIDTH = 118


class _ListByDefault(TyperGroup):
    """`kit configs [CASE]` lists as before: a first word that is not a subcommand is the case to list."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["list", *args]
        return super().resolve_command(ctx, args)


app = typer.Typer(cls=_ListByDefault, invoke_without_command=True, no_args_is_help=False, subcommand_metavar="[CASE] | new ...",
                  context_settings={"help_option_names": ["-h", "--help"]})  # fmt: skip


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


@app.callback()
def configs(ctx: typer.Context) -> None:
    """List a case's configs and what each sets (devices, batches and GAS at the config's own scale, ZeRO stages); `kit configs new` derives one for another device.

    Examples:

      kit configs

      kit configs llava1_5_7b

      kit configs new --from A800x1x8 --device H100 --gpus 1 --host-memory-gib 128
    """
    if ctx.invoked_subcommand is None:
        list_configs(None)


@app.command("list", hidden=True)
def list_configs(case: str = typer.Argument(None, help="The case (default: the only one registered).")) -> None:
    """List a case's configs (what `kit configs [CASE]` runs)."""
    c = _case(case)
    mod = c.config
    training = cases.training(c)
    table = Table(title=f"{c.name} configs")
    # Headers in short lines: a narrow terminal wraps them between words, never cuts one ("micro/GAS/glob…").
    for col in ("name", "description", "nodes x\ngpus", *(f"{s} ZeRO,\nmicro/GAS/global" for s in training)):
        table.add_column(col, overflow="fold")

    def batches(cfg: Any, stage: str) -> str:
        s = cfg.stage(stage)
        try:
            gas = cfg.grad_accum(stage, cfg.nodes * cfg.gpus_per_node)  # GAS on the config's own nodes x gpus
        except ValueError:
            gas = "?"  # its global batch does not divide on its own scale: `kit run` refuses it with the fix
        return f"{s.zero_stage}, {s.micro_batch}/{gas}/{s.global_batch}"

    for name in mod.available():
        cfg = mod.load(name)
        table.add_row(name, cfg.description, f"{cfg.nodes} x {cfg.gpus_per_node}", *(batches(cfg, s) for s in training))
    print_table(console, whole(table, "name"))


def _case(name: str | None) -> Any:
    try:
        return cases.only() if name is None else cases.get(name)
    except cases.UnknownCase as e:
        fail(str(e))


# ---------------------------------------------------------------- the device's memory


def device_memory(device: str, memory_gib: float | None) -> tuple[float, str]:
    """(one device's memory in GiB, where the figure comes from): --memory-gib, else the device's row."""
    if memory_gib is not None:
        if not math.isfinite(memory_gib) or memory_gib <= 0:
            raise UsageError(f"--memory-gib {memory_gib:g}: expected one device's memory in GiB, e.g. 79.6")
        return memory_gib, "--memory-gib"
    row = device_row(device)
    if row is None or not row.get("memory_gib"):
        what = "has no row" if row is None else f"matches the row {row.get('name')!r}, which has no memory_gib"
        raise UsageError(f"--device {device}: {what} in env/accelerators.toml: pass --memory-gib N (one device's "
                         f"memory in GiB, as its driver reports it), or add memory_gib to the row")  # fmt: skip
    return float(row["memory_gib"]), f"env/accelerators.toml: {row.get('name')}"


# ---------------------------------------------------------------- deriving and writing


@dataclass
class Derived:
    """What `kit configs new` derived: the case's answer, the command that derives it again, and the TOML."""

    case: str
    name: str
    reference: str
    config: dict[str, Any]
    reasons: list[tuple[str, Any, Any, str]]
    estimates: dict[str, dict[str, Any]]
    notes: list[str]
    command: str
    memory_source: str
    text: str = ""


def derive(case_name: str | None, reference: str, device: str, memory_gib: float | None = None,
           host_memory_gib: float | None = None, nodes: int | None = None, gpus: int | None = None,
           name: str | None = None) -> Derived:  # fmt: skip
    """Ask the case for the config, check it as a run will, and render its TOML. UsageError for what the user can fix."""
    case = cases.only() if case_name is None else cases.get(case_name)
    if not hasattr(case, "fit"):
        raise UsageError(f"the case {case.name} cannot derive configs: its plug-in has no fit (kit/case/__init__.py "
                         f"Case.fit); copy {reference} and change its free keys by hand")  # fmt: skip
    if host_memory_gib is not None and (not math.isfinite(host_memory_gib) or host_memory_gib <= 0):
        raise UsageError(f"--host-memory-gib {host_memory_gib:g}: expected one node's memory in GiB, e.g. 128")
    try:
        ref_cfg = case.config.load(reference)
    except ValueError as e:  # the schema's ConfigError: names the file and what is available
        raise UsageError(f"--from {reference}: {e}") from None
    nodes = ref_cfg.nodes if nodes is None else nodes
    gpus = ref_cfg.gpus_per_node if gpus is None else gpus
    if nodes < 1 or gpus < 1:
        raise UsageError(f"--nodes {nodes} --gpus {gpus}: each must be at least 1")
    gib, source = device_memory(device, memory_gib)
    target = {"device": device, "memory_gib": gib, "nodes": nodes, "gpus_per_node": gpus,
              "host_memory_gib": host_memory_gib, "name": name}  # fmt: skip
    try:
        out = case.fit(reference, target)
    except ValueError as e:
        raise UsageError(f"{e} (from {ref_cfg.name}, {source})") from None
    several = len(cases.registered()) > 1
    d = Derived(case=case.name, name=out["name"], reference=out.get("reference", ref_cfg.name), config=out["config"],
                reasons=[tuple(r) for r in out["reasons"]], estimates=dict(out.get("estimates") or {}),
                notes=list(out.get("notes") or []),
                command=command_line(case.name, reference, device, memory_gib, host_memory_gib, nodes, gpus, name,
                                     several),
                memory_source=source)  # fmt: skip
    d.text = render(d, gib, host_memory_gib)
    _check(case, d, ref_cfg)
    return d


def _check(case: Any, d: Derived, ref_cfg: Any) -> None:
    """The derived TOML loads with the case's own loader into exactly the derived config, and breaks no fixed rule
    that the reference keeps (closed division). A failure here is the case's fit at fault: say so, write nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / f"{d.name}.toml"
        p.write_text(d.text)
        try:
            loaded = case.config.load(str(p)).to_dict()
        except ValueError as e:
            raise UsageError(f"the derived config does not load with the case's loader: {e} (the case's fit is at "
                             f"fault; nothing was written)") from None  # fmt: skip
    loaded.pop("path", None)
    want = {k: v for k, v in d.config.items() if k != "path"}
    if loaded != want:
        raise UsageError("the derived config's TOML reads back differently from what the case derived (a bug; "
                         "nothing was written)")  # fmt: skip
    try:
        rules = case_rules.load(case.name)
    except case_rules.RulesError:
        return  # a case without rules has no division to keep
    ref = ref_cfg.to_dict()
    before = {b.key for b in case_rules.check_config(rules, ref, synthetic=False)}
    after = case_rules.check_config(rules, loaded, synthetic=False)
    if broken := [b for b in after if b.key not in before]:
        raise UsageError(f"the derived config breaks rules its reference keeps: {'; '.join(map(str, broken))} (the "
                         f"case's fit changed a fixed key; nothing was written)")  # fmt: skip


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)


def _comment(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, COMMENT_WIDTH - len(indent), initial_indent=f"{indent}# ",
                         subsequent_indent=f"{indent}#   ", break_on_hyphens=False)  # fmt: skip


def render(d: Derived, memory_gib: float, host_memory_gib: float | None) -> str:
    """The config as TOML: a header that says how it was made and why each key changed, then every key (defaults
    written out, so the file says everything a run uses), each changed one with its old value beside it."""
    host = f"{host_memory_gib:g} GiB of host memory per node" if host_memory_gib else "no host memory bound given"
    lines = [
        *_comment(f"Written by `{d.command}` from {d.reference}: {d.config['nodes']} x {d.config['gpus_per_node']} "
                  f"{d.config['device']}, {memory_gib:g} GiB per device ({d.memory_source}), {host}. Derived, not "
                  f"hand-written: the test of `kit configs new` derives it again and compares, so change the fit or "
                  f"the reference and write it anew rather than editing it."),  # fmt: skip
        "#",
        "# Changed from the reference, and why:",
    ]
    for key, old, new, why in d.reasons:
        lines += _comment(f"{key}: {_toml_value(old)} -> {_toml_value(new)}: {why}")
    if d.estimates:
        lines += ["#", "# Estimates (per device unless said):"]
        for stage, e in d.estimates.items():
            lines += _comment(f"{stage}: " + ", ".join(f"{k} {v}" for k, v in e.items()))
    for n in d.notes:
        lines += _comment(f"Note: {n}")
    changed = {k: old for k, old, _, _ in d.reasons}

    def table(prefix: str, data: dict[str, Any]) -> list[str]:
        out = []
        for k, v in data.items():
            if isinstance(v, dict) or k == "path":
                continue
            key = f"{prefix}.{k}" if prefix else k
            line = f"{k} = {_toml_value(v)}"
            if key in changed and key not in ("name", "description"):
                line += f"  # {_toml_value(changed[key])} in {d.reference}"
            out.append(line)
        for k, v in data.items():
            if isinstance(v, dict):
                name = f"{prefix}.{k}" if prefix else k
                out += ["", f"[{name}]", *table(name, v)]
        return out

    return "\n".join([*lines, "", *table("", d.config)]) + "\n"


def target_path(d: Derived, out: Path | None) -> Path:
    case = cases.get(d.case)
    folder = out if out is not None else case.root / "configs"
    return folder / f"{d.name}.toml"


def write(d: Derived, out: Path | None) -> Path:
    """Write the config; never over a file that is there (UsageError naming it and what to do)."""
    p = target_path(d, out)
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: not a directory; --out names the folder the config goes into")
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(p, "x") as f:  # exclusive: a config that is there is never replaced
            f.write(d.text)
    except FileExistsError:
        raise UsageError(f"{p} exists: kit configs new never overwrites a config; choose another --name or --out, "
                         f"or delete {p} first") from None  # fmt: skip
    return p


@app.command("new")
def new(
    reference: str = typer.Option(..., "--from", help="The config to start from: a name (kit configs lists them) or "
                                  "a .toml path."),
    device: str = typer.Option(..., help="The target device's short name, e.g. H100 (its memory is read from "
                               "env/accelerators.toml's memory_gib)."),
    memory_gib: float = typer.Option(None, help="One device's memory in GiB (default: env/accelerators.toml's)."),
    host_memory_gib: float = typer.Option(None, help="One node's memory in GiB: optimizer offload is held under it "
                                          "(default: not bounded, and the output says so)."),
    nodes: int = typer.Option(None, help="Nodes (default: the reference's)."),
    gpus: int = typer.Option(None, help="Devices per node (default: the reference's)."),
    name: str = typer.Option(None, help="The new config's name (default: DEVICExNODESxGPUS)."),
    out: Path = typer.Option(None, help="With --write: the folder to write NAME.toml into (default: the case's "
                             "configs folder, so `kit run --config NAME` finds it)."),
    write_file: bool = typer.Option(False, "--write", help="Write the config (never over an existing file); without "
                                    "it, print it."),
    case: str = typer.Option(None, help="The case (default: the only one registered)."),
) -> None:
    """Derive a config for another device from a shipped one, changing only keys the case's rules call free.

    The case's fit keeps the global batches (GAS follows the micro batch) and every key its rules fix, and chooses
    the micro batch, checkpointing and kept layers, optimizer offload and ZeRO buckets to fit one device's memory,
    the devices' count and the host's memory. It prints the config and a table of what changed and why; --write
    writes it beside the shipped ones. The file loads with the case's loader and passes the closed division's rules
    wherever its reference does.

    Examples:

      kit configs new --from A800x1x8 --device H100

      kit configs new --from H200x1x1 --device H100 --host-memory-gib 128 --write

      kit configs new --from A800x1x8 --device A100 --memory-gib 40 --gpus 8 --name A100-40GBx1x8 --write
    """
    try:
        d = derive(case, reference, device, memory_gib, host_memory_gib, nodes, gpus, name)
        path = write(d, out) if write_file else None
    except UsageError as e:
        fail(str(e), e.exit_code)
    if path is None:  # the TOML alone on stdout (`> NAME.toml` keeps it whole); what changed and why on stderr
        typer.echo(d.text, nl=False)
    show_changes(d, console if path is not None else err)
    if path is not None:
        console.print(f"wrote {escape(str(path))}: run it with `kit run {d.case} --config {escape(d.name)}`",
                      soft_wrap=True)  # fmt: skip


def show_changes(d: Derived, to: Console) -> None:
    table = Table(title=f"{d.name}: changed from {d.reference}")
    for col in ("key", "was", "now", "why"):
        table.add_column(col, overflow="fold")
    for key, old, new, why in d.reasons:
        table.add_row(key, _toml_value(old), _toml_value(new), why)
    print_table(to, whole(table, "key"))
    for stage, e in d.estimates.items():
        to.print(escape(f"{stage}: " + ", ".join(f"{k} {v}" for k, v in e.items())), soft_wrap=True)
    for n in d.notes:
        to.print(escape(f"note: {n}"), soft_wrap=True)
