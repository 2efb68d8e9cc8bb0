"""The `maap` command line: run a FineTuneJob locally, print the CRD, validate, serve."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from maap_api.errors import UserError
from rich.console import Console
from rich.markup import escape

from maap.crd import render_crd
from maap.local.serving import DEFAULT_CONSOLE_PORT
from maap.manifest import ManifestError, load_manifest
from maap.podspec import ModelCacheSettings, OperatorSettings
from maap.settings import OperatorConfig

app = typer.Typer(
    help="maap: fine-tune open models on your own machines and serve them with ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

EXIT_USER_ERROR = 2


def print_error(message: str) -> None:
    # User text (paths, URIs like hf://org/name[@revision]) is never read as markup.
    errors.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)


def fail(message: str) -> typer.Exit:
    print_error(message)
    return typer.Exit(EXIT_USER_ERROR)


@app.command()
def run(
    manifest: Annotated[Path, typer.Argument(help="FineTuneJob YAML, as for kubectl apply.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Artifacts go to OUTPUT/<job name>.")
    ] = Path("maap-output"),
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the model after export.")
    ] = True,
    host: Annotated[str, typer.Option(help="Address the server binds.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="Server port (default: spec.serving.port).")
    ] = None,
    web_console: Annotated[
        bool,
        typer.Option(
            "--console/--no-console",
            help="Serve the web console (loss curve, playground) while the job runs.",
        ),
    ] = True,
    console_port: Annotated[
        int, typer.Option(help="The console's port (any free one if it is taken).")
    ] = DEFAULT_CONSOLE_PORT,
) -> None:
    """Train, export and serve a FineTuneJob on this machine."""
    from maap_trainer.ports import ensure_port_free

    from maap.local.run_job import RunJob
    from maap.local.runner import LocalRunner, StageFailed, resolve_trainer_config

    try:
        job = load_manifest(manifest)
        cfg = resolve_trainer_config(job, manifest.parent.resolve(), output)
        serving = serve and cfg.serving.enabled
        if serving and not cfg.export.enabled:
            raise UserError("spec.export.enabled: serving needs the ONNX export; enable export")
        port = port or cfg.serving.port
        if serving:
            ensure_port_free(host, port)
        runner = LocalRunner(cfg, console)
        runner.check_inputs()
    except (ManifestError, UserError) as exc:
        raise fail(str(exc)) from None
    console.print(
        f"[bold]{job.metadata.name}[/]: "
        + escape(
            f"{cfg.method.type} on {cfg.model.display_name}, data {cfg.dataset.path}, "
            f"artifacts in {cfg.output_dir}"
        )
    )
    # `kill` stops a run as Ctrl-C does: the stage or the model server child stops with it.
    signal.signal(signal.SIGTERM, _interrupt)
    runner.job = RunJob(job, runner.output_dir)
    if serving and console_port == port:  # the model server's port stays the server's
        console_port = 0
    shown = None
    if web_console:
        from maap.local.run_console import start_run_console

        shown = start_run_console(runner, host, console_port, console)
    try:
        runner.run_pipeline()
        if not serving:
            runner.job.succeeded()
        runner.print_summary()
        if shown is not None and serving:
            console.print(f"   console: {shown.url}", soft_wrap=True, highlight=False)
        if serving:
            raise typer.Exit(runner.serve(host, port))
    except StageFailed as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        errors.print("interrupted")
        raise typer.Exit(130) from None
    finally:
        if shown is not None:
            shown.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@app.command()
def validate(manifest: Annotated[Path, typer.Argument(help="FineTuneJob YAML.")]) -> None:
    """Check a manifest (and its local data set) without running anything."""
    from maap_api.sources import is_uri

    from maap.local.runner import LocalRunner, resolve_trainer_config

    try:
        job = load_manifest(manifest)
        cfg = resolve_trainer_config(job, manifest.parent.resolve(), Path("maap-output"))
        LocalRunner(cfg, console).check_inputs()
    except ManifestError as exc:
        # One line per problem, each naming its field (`job.yaml: spec.method.type: ...`).
        for line in exc.lines()[:-1]:
            print_error(line)
        raise fail(exc.lines()[-1]) from None
    except UserError as exc:
        raise fail(str(exc)) from None
    remote = [
        loc for loc in (job.spec.dataset.path, job.spec.dataset.eval_path) if loc and is_uri(loc)
    ]
    note = f" (the fetch stage checks the rows of {', '.join(remote)})" if remote else ""
    console.print(escape(f"{manifest}: FineTuneJob {job.metadata.name} is valid{note}"))


@app.command()
def crd(
    kind: Annotated[
        str, typer.Option(help="FineTuneJob, or CachedModel (the shared model cache).")
    ] = "FineTuneJob",
) -> None:
    """Print a CustomResourceDefinition of maap (generated from the API models)."""
    if kind == "CachedModel":
        from maap.cachedmodel_crd import render_cached_model_crd

        sys.stdout.write(render_cached_model_crd())
    elif kind == "FineTuneJob":
        sys.stdout.write(render_crd())
    else:
        raise fail(f"--kind: {kind!r} is not a maap kind; use FineTuneJob or CachedModel")


@app.command()
def rbac(
    namespace: Annotated[str, typer.Option(help="Namespace of the operator.")] = "maap-system",
    chart_rules: Annotated[
        bool,
        typer.Option(help="Print only the rules, split by scope, as the Helm chart reads them."),
    ] = False,
    gateway: Annotated[
        bool, typer.Option(help="Print the gateway's (`maap gateway --kube`) instead.")
    ] = False,
) -> None:
    """Print the operator's least-privilege ServiceAccount, ClusterRole and binding."""
    import yaml

    from maap.rbac import render_chart_rules, render_gateway_rbac, render_rbac

    if gateway:
        sys.stdout.write(yaml.safe_dump_all(render_gateway_rbac(namespace), sort_keys=False))
        return
    sys.stdout.write(render_chart_rules() if chart_rules else render_rbac(namespace))


@app.command()
def docs() -> None:
    """Print the FineTuneJob field reference (Markdown, generated from the API models)."""
    from maap.docs import render_reference

    sys.stdout.write(render_reference())


@app.command("serve")
def serve_command(
    model_dir: Annotated[Path, typer.Argument(help="An exported ONNX model directory.")],
    config: Annotated[
        Path | None,
        typer.Option(
            help="The job's config.json, as `maap run` writes it in the output directory: "
            "its serving section (port, batching, queue, limits, auth) applies. "
            "Default: MODEL_DIR/../config.json when it exists."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address the server binds.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="Server port (default: the config's, else 8000).")
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option(help="Name clients ask for (default: the job's, else the parent folder)."),
    ] = None,
) -> None:
    """Serve an exported model with the OpenAI-compatible API, as the job's server would."""
    from maap.local.serving import job_config_beside, local_server

    try:
        if config is not None and not config.is_file():
            raise UserError(f"--config: {config}: no such file")
        server = local_server(
            model_dir, config or job_config_beside(model_dir), host, port, model_name
        )
    except UserError as exc:
        raise fail(str(exc)) from None
    os.execve(sys.executable, server.argv, server.env)


@app.command()
def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch only these namespaces (repeatable)."),
    ] = None,
    trainer_image: Annotated[
        str, typer.Option(envvar="MAAP_TRAINER_IMAGE", help="Image of every stage's pods.")
    ] = OperatorSettings.trainer_image,
    image_pull_policy: Annotated[
        str, typer.Option(envvar="MAAP_IMAGE_PULL_POLICY", help="imagePullPolicy of those pods.")
    ] = OperatorSettings.image_pull_policy,
    workload_service_account: Annotated[
        str | None,
        typer.Option(envvar="MAAP_WORKLOAD_SERVICE_ACCOUNT", help="ServiceAccount of the pods."),
    ] = None,
    progress_url: Annotated[
        str | None,
        typer.Option(
            envvar="MAAP_PROGRESS_URL",
            help="Base URL of the progress API as pods reach it (unset: pods do not report).",
        ),
    ] = None,
    progress_port: Annotated[
        int, typer.Option(envvar="MAAP_PROGRESS_PORT", help="Port of the progress API (0: off).")
    ] = OperatorConfig.progress_port,
    liveness_port: Annotated[
        int, typer.Option(envvar="MAAP_LIVENESS_PORT", help="Port of /healthz (0: off).")
    ] = OperatorConfig.liveness_port,
    metrics_port: Annotated[
        int, typer.Option(envvar="MAAP_METRICS_PORT", help="Port of Prometheus /metrics (0: off).")
    ] = OperatorConfig.metrics_port,
    max_workers: Annotated[
        int, typer.Option(envvar="MAAP_MAX_WORKERS", help="Threads running handlers.")
    ] = OperatorConfig.max_workers,
    wait_check_seconds: Annotated[
        float,
        typer.Option(
            envvar="MAAP_WAIT_CHECK_SECONDS",
            help="Re-check interval of jobs waiting on something children do not show.",
        ),
    ] = OperatorConfig.wait_check_seconds,
    resync_seconds: Annotated[
        float,
        typer.Option(envvar="MAAP_RESYNC_SECONDS", help="Full resync from the caches."),
    ] = OperatorConfig.resync_seconds,
    model_cache_claim: Annotated[
        str | None,
        typer.Option(
            envvar="MAAP_MODEL_CACHE_CLAIM",
            help="The shared model cache: the claim every namespace's jobs mount (created in "
            "each namespace when missing; unset: each job keeps its base model on its volume).",
        ),
    ] = None,
    model_cache_size: Annotated[
        str, typer.Option(envvar="MAAP_MODEL_CACHE_SIZE", help="Size of a created cache claim.")
    ] = ModelCacheSettings.size,
    model_cache_storage_class: Annotated[
        str | None,
        typer.Option(envvar="MAAP_MODEL_CACHE_STORAGE_CLASS", help="Its storageClassName."),
    ] = None,
    model_cache_access_mode: Annotated[
        str,
        typer.Option(
            envvar="MAAP_MODEL_CACHE_ACCESS_MODE",
            help="Its access mode: ReadWriteMany lets jobs on every node share it.",
        ),
    ] = ModelCacheSettings.access_mode,
    peering: Annotated[
        str | None,
        typer.Option(
            envvar="MAAP_PEERING",
            help="Run as one of several replicas: the name of their KopfPeering (one active).",
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            envvar="MAAP_PRIORITY",
            help="Peering priority, highest active (default: the oldest replica is active).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the FineTuneJob operator against the current kubeconfig or in-cluster config."""
    import asyncio
    import logging

    import kopf

    import maap.handlers
    import maap.model_cache
    import maap.peering

    config = OperatorConfig(
        workloads=OperatorSettings(
            trainer_image=trainer_image,
            image_pull_policy=image_pull_policy,
            service_account=workload_service_account or None,
            progress_url=progress_url or None,
            model_cache=ModelCacheSettings(
                claim_name=model_cache_claim,
                size=model_cache_size,
                storage_class_name=model_cache_storage_class or None,
                access_mode=model_cache_access_mode,
            )
            if model_cache_claim
            else None,
        ),
        namespaces=tuple(namespace or ()),
        liveness_port=liveness_port,
        metrics_port=metrics_port,
        progress_port=progress_port,
        max_workers=max_workers,
        wait_check_seconds=wait_check_seconds,
        resync_seconds=resync_seconds,
        peering=peering or None,
        priority=maap.peering.default_priority() if priority is None else priority,
    )
    maap.handlers.configure_timers(config)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO)
    settings = kopf.OperatorSettings()
    if config.peering:
        if problem := maap.peering.problem(config.peering, config.namespaces):
            raise fail(problem)
        maap.peering.configure(settings)
    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None
    asyncio.run(
        kopf.operator(
            settings=settings,
            clusterwide=not namespace,
            namespaces=namespace or [],
            liveness_endpoint=liveness,
            standalone=config.peering is None,
            peering_name=config.peering,
            priority=config.priority,
            memo=kopf.Memo(config=config),
        )
    )


@app.command()
def gateway(
    local: Annotated[
        bool,
        typer.Option(
            "--local/--kube",
            help="Run jobs on this machine, or as FineTuneJobs in "
            "the cluster of the current kubeconfig / service account.",
        ),
    ] = True,
    host: Annotated[str, typer.Option(help="Address the gateway binds.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the OpenAI API (base URL /v1).")] = 8080,
    state_dir: Annotated[
        Path | None,
        typer.Option(help="Files and (--local) jobs live here. Default: ~/.cache/maap/gateway."),
    ] = None,
    keys_file: Annotated[
        Path | None,
        typer.Option(
            help="API keys: YAML `keys: [{key, namespace}]`. Default: --local is "
            "open (tenant `default`); --kube reads labelled Secrets."
        ),
    ] = None,
    internal_url: Annotated[
        str | None, typer.Option(help="--kube: the URL pods reach the gateway at.")
    ] = None,
    file_secret_env: Annotated[
        str | None, typer.Option(help="--kube: env var with the secret that signs file links.")
    ] = None,
    webhook_url: Annotated[
        str | None,
        typer.Option(help="POST fine_tuning.job.succeeded|failed|cancelled events here."),
    ] = None,
    webhook_secret_env: Annotated[
        str | None, typer.Option(help="Env var with the webhooks' HMAC secret (whsec_...).")
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="--kube: the gateway's own namespace (API-key Secrets).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """The OpenAI fine-tuning API (files, jobs, events, checkpoints) and one inference
    endpoint for every tuned model: point the openai client's base_url at it."""
    import logging

    from maap_trainer.model_prep import cache_root

    from maap.gateway.serve import GatewayOptions, run_gateway

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO)
    options = GatewayOptions(
        local=local, host=host, port=port, state_dir=state_dir or cache_root() / "gateway",
        keys_file=keys_file, internal_url=internal_url, file_secret_env=file_secret_env,
        webhook_url=webhook_url, webhook_secret_env=webhook_secret_env, namespace=namespace,
    )  # fmt: skip
    try:
        run_gateway(options)
    except UserError as exc:
        raise fail(str(exc)) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
