"""The ``inferq`` command: run the local stack, workers, keys and the registry database."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import click

from inferq.settings import CONTROL_QUEUE, Settings, load_settings

if TYPE_CHECKING:
    from inferq.client import Client


@click.group()
@click.version_option(package_name="inferq")
@click.pass_context
def main(ctx: click.Context) -> None:
    """inferq: Celery task-queue inference in front of NVIDIA Triton."""
    ctx.obj = load_settings()


@main.command()
@click.pass_obj
def up(settings: Settings) -> None:
    """Run the whole local stack in the foreground (Ctrl-C stops all)."""
    from launcher.stack import run_up

    sys.exit(run_up(settings))


@main.command()
@click.option("--gpu", type=int, help="GPU index: consume only queue gpu.N with CUDA_VISIBLE_DEVICES=N.")
@click.option("--control", is_flag=True, help="Consume the control queue (deploys and maintenance).")
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Threads of a GPU worker (default INFERQ_GPU_WORKER_CONCURRENCY), processes of the control "
    "worker (INFERQ_WORKER_CONCURRENCY).",
)
@click.pass_obj
def worker(settings: Settings, gpu: int | None, control: bool, concurrency: int | None) -> None:
    """Start one Celery worker pinned to a GPU (or the control worker)."""
    from launcher.stack import gpu_worker_argv, worker_argv, worker_env

    if (gpu is None) == (not control):
        raise click.UsageError("give exactly one of --gpu N or --control")
    if gpu is not None and gpu not in settings.gpus:
        raise click.UsageError(f"GPU {gpu} is not in INFERQ_GPUS ({settings.gpus})")
    if gpu is not None:
        if concurrency:
            settings = dataclasses.replace(settings, gpu_worker_concurrency=concurrency)
        argv = gpu_worker_argv(settings, gpu, f"gpu{gpu}")
    else:
        argv = worker_argv(CONTROL_QUEUE, concurrency or settings.worker_concurrency, "control")
    os.execve(argv[0], argv, worker_env(settings, gpu))


@main.command("api")
@click.pass_obj
def serve_api(settings: Settings) -> None:
    """Serve the API under gunicorn as INFERQ_API_* say (what `inferq up` and the image run).

    Example: INFERQ_API_HOST=0.0.0.0 INFERQ_API_WORKERS=2 inferq api
    """
    from launcher.stack import api_argv, worker_env

    argv = api_argv(settings)
    os.execve(argv[0], argv, worker_env(settings, None))


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant the key belongs to.")
@click.option("--admin", is_flag=True, help="Allow registry writes.")
@click.option(
    "--rate-limit", default=None, help="Requests allowed, e.g. 1000/minute (default INFERQ_RATE_LIMIT)."
)
@click.pass_obj
def keys_create(settings: Settings, tenant: str, admin: bool, rate_limit: str | None) -> None:
    """Create a key; the key is printed alone on the last line (only its hash is stored)."""
    from registry.apikeys import create_key
    from registry.db import Database

    database = Database(settings.database_url)
    try:
        with database.session() as session:
            row, key = create_key(session, tenant, admin=admin, rate_limit=rate_limit)
    except ValueError as exc:
        hint = "--rate-limit" if "rate" in str(exc) else "--tenant"
        raise click.BadParameter(str(exc), param_hint=hint) from None
    finally:
        database.dispose()
    click.echo(
        f"key id {row.id} for tenant {row.tenant}{' (admin)' if row.admin else ''}; "
        "store it now, it is not shown again:",
        err=False,
    )
    click.echo(key)


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.pass_obj
def keys_list(settings: Settings, tenant: str | None) -> None:
    """List keys: id, tenant, prefix, admin, rate limit, created, revoked (never the keys themselves)."""
    from registry.apikeys import list_keys
    from registry.db import Database

    database = Database(settings.database_url)
    try:
        with database.session() as session:
            rows = list_keys(session, tenant)
            click.echo(
                f"{'ID':32}  {'TENANT':16} {'PREFIX':9} {'ADMIN':5} {'RATE':14} {'CREATED':20} REVOKED"
            )
            for row in rows:
                revoked = row.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if row.revoked_at else "-"
                click.echo(
                    f"{row.id:32}  {row.tenant:16} {row.prefix:9} {'yes' if row.admin else 'no':5} "
                    f"{row.rate_limit or 'default':14} {row.created_at:%Y-%m-%d %H:%M:%S}  {revoked}"
                )
    finally:
        database.dispose()


@keys.command("revoke")
@click.argument("key_id")
@click.pass_obj
def keys_revoke(settings: Settings, key_id: str) -> None:
    """Revoke a key by id: it stops authenticating at once."""
    from registry.apikeys import revoke_key
    from registry.db import Database

    database = Database(settings.database_url)
    try:
        with database.session() as session:
            row = revoke_key(session, key_id)
            if row is None:
                raise click.ClickException(f"no key with id {key_id}")
            click.echo(f"revoked key {row.id} ({row.prefix}..., tenant {row.tenant})")
    finally:
        database.dispose()


@main.group()
def db() -> None:
    """The registry database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
def db_upgrade(settings: Settings, revision: str) -> None:
    """Apply the Alembic migrations."""
    from registry.db import upgrade

    upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}: {settings.database_url.split('@')[-1]}")


# --- client commands (talk to the API at INFERQ_URL with INFERQ_API_KEY) ---------------


def api(settings: Settings) -> Client:
    from inferq.client import Client

    return Client(settings.url, settings.api_key)


def run_client(call: Callable[[], Any]) -> Any:
    """Run an API call; a problem answer becomes a clean CLI error (exit 1)."""
    from inferq.client import ApiError

    try:
        return call()
    except ApiError as exc:
        raise click.ClickException(exc.describe()) from None


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


@main.group()
def models() -> None:
    """The model registry (INFERQ_URL, INFERQ_API_KEY; writes need an admin key)."""


@models.command("list")
@click.option("--name")
@click.option("--status")
@click.option("--framework")
@click.option("--label", "labels", multiple=True, help="key:value, repeatable (all must match)")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON page.")
@click.pass_obj
def models_list(
    settings: Settings,
    name: str | None,
    status: str | None,
    framework: str | None,
    labels: tuple[str, ...],
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List models, newest first."""
    params: dict[str, Any] = {"limit": limit, "offset": offset, "label": list(labels)}
    params.update({k: v for k, v in (("name", name), ("status", status), ("framework", framework)) if v})
    page = run_client(lambda: api(settings).get("/v1/models", params=params))
    if as_json:
        echo_json(page)
        return
    click.echo(f"{'ID':32}  {'NAME':20} {'VERSION':8} {'STATUS':10} GPUS")
    for model in page["data"]:
        gpus = ",".join(f"{d['gpu']}:{d['status']}" for d in model["deployments"]) or "-"
        click.echo(f"{model['id']:32}  {model['name']:20} {model['version']:8} {model['status']:10} {gpus}")
    click.echo(f"{len(page['data'])} of {page['total']} (offset {page['offset']})")


@models.command("show")
@click.argument("ref")
@click.pass_obj
def models_show(settings: Settings, ref: str) -> None:
    """Show a model by id or NAME:VERSION."""
    echo_json(run_client(lambda: api(settings).find_model(ref)))


@models.command("register")
@click.option("--file", "path", type=click.File("r"), help="A model as JSON (- for stdin).")
@click.option(
    "--from-repository",
    "model_dir",
    type=click.Path(exists=True, file_okay=False),
    help="A model folder of a Triton repository (config.pbtxt); registers each version.",
)
@click.option("--label", "labels", multiple=True, help="key:value added to each registered model.")
@click.pass_obj
def models_register(settings: Settings, path: Any, model_dir: str | None, labels: tuple[str, ...]) -> None:
    """Register a model version (from a JSON file or a Triton model folder)."""
    from pathlib import Path

    from registry.triton_repository import describe_model_dir

    if (path is None) == (model_dir is None):
        raise click.UsageError("give exactly one of --file or --from-repository")
    bodies = [json.load(path)] if path is not None else describe_model_dir(Path(model_dir))  # type: ignore[arg-type]
    extra = dict(label.split(":", 1) for label in labels if ":" in label)
    for body in bodies:
        if extra:
            body["labels"] = {**body.get("labels", {}), **extra}
        model = run_client(partial(api(settings).post, "/v1/models", body))
        click.echo(f"registered {model['name']}:{model['version']} as {model['id']}")


@models.command("deploy")
@click.argument("ref")
@click.option("--gpus", required=True, help="Comma-separated GPU indexes, e.g. 0,1")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until ready or failed.")
@click.option("--timeout", type=float, default=600, show_default=True)
@click.pass_obj
def models_deploy(settings: Settings, ref: str, gpus: str, wait: bool, timeout: float) -> None:
    """Load a model on GPUs (by id or NAME:VERSION)."""
    import time

    try:
        gpu_list = [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        raise click.BadParameter("comma-separated integers", param_hint="--gpus") from None
    client = api(settings)
    model = run_client(lambda: client.find_model(ref))
    model = run_client(lambda: client.post(f"/v1/models/{model['id']}/deploy", {"gpus": gpu_list}))
    deadline, path = time.monotonic() + timeout, f"/v1/models/{model['id']}"
    while wait and model["status"] == "deploying" and time.monotonic() < deadline:
        time.sleep(0.5)
        model = run_client(lambda: client.get(path))
    for deployment in model["deployments"]:
        click.echo(f"gpu {deployment['gpu']}: {deployment['status']} {deployment['message']}".rstrip())
    click.echo(f"{model['name']}:{model['version']} {model['status']}")
    if model["status"] == "failed":
        sys.exit(1)


@models.command("undeploy")
@click.argument("ref")
@click.option("--gpus", default=None, help="Comma-separated GPU indexes (default: all).")
@click.pass_obj
def models_undeploy(settings: Settings, ref: str, gpus: str | None) -> None:
    """Unload a model from GPUs; the router stops sending it there first."""
    client = api(settings)
    model = run_client(lambda: client.find_model(ref))
    body = {"gpus": [int(g) for g in gpus.split(",")]} if gpus else {}
    model = run_client(lambda: client.post(f"/v1/models/{model['id']}/undeploy", body))
    for warning in model.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{model['name']}:{model['version']} {model['status']}")


@models.command("stats")
@click.argument("ref")
@click.pass_obj
def models_stats(settings: Settings, ref: str) -> None:
    """Requests, errors and latency percentiles of a model, overall and per GPU."""
    client = api(settings)
    model = run_client(lambda: client.find_model(ref))
    echo_json(run_client(lambda: client.get(f"/v1/models/{model['id']}/stats")))


@models.command("delete")
@click.argument("ref")
@click.pass_obj
def models_delete(settings: Settings, ref: str) -> None:
    """Delete a model version that is not deployed."""
    client = api(settings)
    model = run_client(lambda: client.find_model(ref))
    run_client(lambda: client.delete(f"/v1/models/{model['id']}"))
    click.echo(f"deleted {model['name']}:{model['version']}")


@main.command("settings")
@click.pass_obj
def show_settings(settings: Settings) -> None:
    """Print the effective settings (secrets masked)."""
    click.echo(settings.describe())


if __name__ == "__main__":
    main()
