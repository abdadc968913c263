"""The ``inferq`` command: run the local stack, workers, keys and the registry database."""

from __future__ import annotations

import os
import sys

import click

from inferq.settings import CONTROL_QUEUE, Settings, gpu_queue, load_settings


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
    from inferq.stack import run_up

    sys.exit(run_up(settings))


@main.command()
@click.option("--gpu", type=int, help="GPU index: consume only queue gpu.N with CUDA_VISIBLE_DEVICES=N.")
@click.option(
    "--control", is_flag=True, help="Consume the control queue (planning, finalizing, maintenance)."
)
@click.option(
    "--concurrency", type=int, default=None, help="Worker processes (default INFERQ_WORKER_CONCURRENCY)."
)
@click.pass_obj
def worker(settings: Settings, gpu: int | None, control: bool, concurrency: int | None) -> None:
    """Start one Celery worker pinned to a GPU (or the control worker)."""
    from inferq.stack import worker_argv, worker_env

    if (gpu is None) == (not control):
        raise click.UsageError("give exactly one of --gpu N or --control")
    if gpu is not None and gpu not in settings.gpus:
        raise click.UsageError(f"GPU {gpu} is not in INFERQ_GPUS ({settings.gpus})")
    queue, name = (gpu_queue(gpu), f"gpu{gpu}") if gpu is not None else (CONTROL_QUEUE, "control")
    argv = worker_argv(queue, concurrency or settings.worker_concurrency, name)
    os.execve(argv[0], argv, worker_env(settings, gpu))


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant the key belongs to.")
@click.option("--admin", is_flag=True, help="Allow registry writes.")
@click.pass_obj
def keys_create(settings: Settings, tenant: str, admin: bool) -> None:
    """Create a key; the key is printed alone on the last line (only its hash is stored)."""
    from registry.apikeys import create_key
    from registry.db import Database

    database = Database(settings.database_url)
    try:
        with database.session() as session:
            row, key = create_key(session, tenant, admin=admin)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tenant") from None
    finally:
        database.dispose()
    click.echo(
        f"key id {row.id} for tenant {row.tenant}{' (admin)' if row.admin else ''}; "
        "store it now, it is not shown again:",
        err=False,
    )
    click.echo(key)


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


@main.command("settings")
@click.pass_obj
def show_settings(settings: Settings) -> None:
    """Print the effective settings (secrets masked)."""
    click.echo(settings.describe())


if __name__ == "__main__":
    main()
