"""`kit build`: build the kit's image for one image variant on the local Docker engine.

The variant is one of the stack's rows in env/stacks.toml, each for one accelerator vendor's devices; `--variant`
takes it by name, and each vendor's own option does too (NVIDIA's `--cuda`), registered from the vendors at
import so that the command names none of them.

Exit codes: 0 built (or planned, with --dry-run), 1 the build failed, 2 bad request (nothing sent to the
engine), 3 no engine, or no base image it can use, 130 interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from kit import vendors
from kit.image import builder as b


def variant_flags() -> list[str]:
    """--variant and each registered vendor's own name for it (`variant_option`), as typer option names."""
    flags = ["--variant"]
    for name in vendors.names():
        try:
            opt = getattr(vendors.get(name), "variant_option", "") or ""
        except Exception:  # noqa: BLE001 - a broken vendor package must not break the kit's CLI
            continue
        if opt.startswith("--") and opt not in flags:
            flags.append(opt)
    return flags


def show_plan(plan: b.BuildPlan, console: Console) -> None:
    """What --dry-run prints (and a real build prints first): every decision and the exact SDK call."""
    rows = [
        ("stack", f"{plan.stack} (env/stacks.toml)"),
        ("vendor", plan.vendor),
        ("variant", f"{plan.variant_title or plan.variant} ({plan.variant_reason})"),
        ("base image", plan.base_image),
        ("Dockerfile", str(plan.dockerfile)),
        ("context", str(plan.context)),
        ("locks", ", ".join(str(p) for p in plan.locks)),
        ("lock sha256", plan.lock_sha256),
        ("content hash", plan.content_hash),
        ("tag", plan.tag),
        *((f"build arg {k}", v) for k, v in b.redact_args(plan.build_args).items()),
        *((f"label {k}", v) for k, v in plan.labels.items()),
    ]
    if plan.ca_bundle:
        rows.append(("CA bundle", f"{plan.ca_bundle} -> {plan.context / b.CA_IN_CONTEXT} (removed after the build)"))
    rows.append(("record", f"{plan.record_path} (log: {plan.log_path})"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        console.print(f"{k:<{width}}  {escape(v)}", highlight=False, soft_wrap=True)
    console.print(f"{'SDK call':<{width}}  {escape(plan.sdk_call_text())}", highlight=False, soft_wrap=True)
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)


def build(
    stack: str = typer.Option("reference", "--stack", help="Software stack (env/stacks.toml): reference or current."),
    variant: str = typer.Option("auto", *variant_flags(), help="auto (what this host's driver runs), or a variant of "
                                "the stack (env/stacks.toml; NVIDIA: --cuda 12.1 or 11.8 for reference, 13.0 for current)."),
    vendor: str = typer.Option(None, "--vendor", help="The accelerator vendor whose devices the image is for "
                               "(default: the variant's, or this host's)."),
    base_image: str = typer.Option(None, "--base-image", help="Base image (default: the variant's, from its lock)."),
    tag: str = typer.Option(None, "--tag", help="Image tag (default: kit-llava:VERSION[-STACK]-cuXXX-HASH12)."),
    file: Path = typer.Option(None, "--file", "-f", help="Dockerfile (default: CONTEXT/Dockerfile)."),
    context: Path = typer.Option(None, "--context", help="Build context (default: the kit checkout)."),
    build_arg: list[str] = typer.Option(None, "--build-arg", metavar="K=V", help="Extra build arg (repeatable)."),
    pip_index_url: str = typer.Option(None, "--pip-index-url", help="A PyPI mirror (its simple/ URL)."),
    ca_bundle: Path = typer.Option(None, "--ca-bundle", help="PEM CA of a TLS-inspecting proxy, trusted in the build."),
    results: Path = typer.Option(Path("runs"), "--results", help="Build records go to RESULTS/builds/."),
    docker_host: str = typer.Option(None, "--docker-host", help="Docker engine URL (default: the environment's)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and the SDK call; build nothing."),
    json_out: bool = typer.Option(False, "--json", help="With --dry-run: the plan as JSON."),
) -> None:
    """Build the kit's image for one software stack and image variant, tagged by a hash of the Dockerfile and the lock.

    --stack reference (the default) is the reference's pins; --stack current the versions the bench/results GPU
    figures ran (liger-kernel included). Each variant is for one vendor's devices; --variant auto asks the vendor
    of this host's devices which one its driver runs (NVIDIA, for the reference: CUDA 12.1 when the driver
    fully supports it, else 11.8, also through minor-version compatibility; for current, 13.0). The base
    image's digest and the build go to RESULTS/builds/TAG.json.

    Examples:

      kit build

      kit build --stack current --dry-run

      kit build --cuda 11.8 --dry-run

      kit build --pip-index-url https://mirror/simple --ca-bundle /etc/ssl/certs/corp.pem

      kit build --base-image registry.local/nvidia/cuda:12.1.1-cudnn8-devel-ubuntu20.04 --tag kit-llava:site
    """
    out, err = Console(), Console(stderr=True)

    def fail(message: str, fix: str, code: int) -> None:
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        if fix:
            err.print(f"[bold]fix:[/] {escape(fix)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code)

    try:
        plan = b.plan_build(
            b.KIT_ROOT if context is None else context, variant, base_image, tag, file, list(build_arg or []),
            pip_index_url, ca_bundle, results=results, stack=stack, vendor=vendor,
        )  # fmt: skip
    except b.BuildRequestError as e:
        fail(e.message, e.fix, 2)
    if dry_run:
        if json_out:
            out.print_json(json.dumps(plan.to_dict()))
        else:
            out.print("[bold]kit build --dry-run[/]: nothing is sent to the engine")
            show_plan(plan, out)
        raise typer.Exit(0)

    show_plan(plan, out)
    try:
        client = b.connect(docker_host)
    except b.EngineUnavailable as e:
        fail(e.message, e.fix, 3)
    try:
        record = b.run_build(plan, client, out)
    except b.EngineUnavailable as e:
        fail(e.message, e.fix, 3)
    except b.BuildFailed as e:
        fix = f"the whole log: {e.log}" if e.log else ""
        fail(e.message, fix, 1)
    except KeyboardInterrupt:
        err.print(f"interrupted: the build of {plan.tag} was stopped (the engine cancels it when kit disconnects)")
        raise typer.Exit(130) from None
    finally:
        client.close()
    out.print(f"[bold green]built[/] {escape(record['tag'])} ({record['image_id'][:19]}) on "
              f"{escape(record['base_image']['digest'])}; record: {plan.record_path}", highlight=False)
