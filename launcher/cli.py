"""The ``inferq`` command: run the local stack, workers, keys and the registry database; and the
client commands (models, infer, files, submit, batches, results), which talk to the API through
the SDK (``inferq.client``). Exit codes of the client commands: docs/cli.md."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from inferq.settings import CONTROL_QUEUE, Settings, load_settings

if TYPE_CHECKING:
    from inferq.client import Client


@click.group()
@click.version_option(package_name="inferq")
@click.pass_context
def main(ctx: click.Context) -> None:
    """inferq: Celery task-queue inference in front of NVIDIA Triton.

    Example: inferq submit requests.jsonl --model digits --wait
    """
    ctx.obj = load_settings()


@main.command()
@click.pass_obj
def up(settings: Settings) -> None:
    """Run the whole local stack in the foreground (Ctrl-C stops all).

    Example: INFERQ_GPUS=0,1 inferq up
    """
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
    """Start one Celery worker pinned to a GPU (or the control worker).

    Example: inferq worker --gpu 0 --concurrency 4
    """
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


@main.command("init")
@click.option(
    "--wait",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to keep trying while the database or the object store does not answer yet.",
)
@click.pass_obj
def init(settings: Settings, wait: float) -> None:
    """Prepare a deployment, once, before the API and workers start: apply the database migrations
    and create the S3 bucket if it is missing. Safe to run again (what the Compose `init` service and
    the Kubernetes `inferq-init` Job run).

    Example: inferq init --wait 300
    """
    from sqlalchemy.exc import OperationalError, SQLAlchemyError

    from inferq.retries import waiting
    from inferq.settings import mask_secrets
    from registry.db import upgrade
    from workers.storage import ObjectStore, StorageError, StorageUnavailable

    def transient(exc: BaseException) -> bool:
        """Still starting (refused, timed out), not wrong (credentials, a missing database)."""
        text = str(exc).lower()
        permanent = ("authentication failed", "does not exist", "access denied", "invalid")
        return isinstance(exc, (OperationalError, StorageUnavailable)) and not any(
            p in text for p in permanent
        )

    def note(what: str) -> Callable[[BaseException], None]:
        def say(exc: BaseException) -> None:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            click.echo(f"init: waiting for {what}: {mask_secrets(first)}", err=True)

        return say

    s = settings
    try:
        waiting(transient, wait, note("the database"))(lambda: upgrade(s.database_url))
        click.echo(f"database  {mask_secrets(s.database_url)} migrated")
        store = ObjectStore(s.s3_endpoint, s.s3_access_key, s.s3_secret_key, s.s3_bucket, s.s3_region)
        waiting(transient, wait, note("the object store"))(store.ensure_bucket)
    except (SQLAlchemyError, StorageError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise click.ClickException(f"init failed: {mask_secrets(first)}") from None
    click.echo(f"s3        {s.s3_endpoint} bucket {s.s3_bucket} ready")


@main.command("beat")
@click.pass_obj
def beat(settings: Settings) -> None:
    """Run celery beat, the scheduler of the periodic upkeep (exactly one per deployment).

    Example: inferq beat
    """
    from pathlib import Path

    from launcher.stack import beat_argv, worker_env

    Path(settings.data_dir).expanduser().mkdir(parents=True, exist_ok=True)
    argv = beat_argv(settings)
    os.execve(argv[0], argv, worker_env(settings, None))


@main.command("flower")
@click.pass_obj
def flower(settings: Settings) -> None:
    """Run Flower on INFERQ_FLOWER_HOST:INFERQ_FLOWER_PORT (set FLOWER_BASIC_AUTH=user:password).

    Example: FLOWER_BASIC_AUTH=admin:s3cret inferq flower
    """
    from launcher.stack import flower_argv, worker_env

    argv = flower_argv(settings)
    os.execve(argv[0], argv, worker_env(settings, None))


@main.group()
def keys() -> None:
    """API keys (straight in the registry database, INFERQ_DATABASE_URL).

    Example: inferq keys create --tenant acme --rate-limit 1000/minute
    """


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant the key belongs to.")
@click.option("--admin", is_flag=True, help="Allow registry writes.")
@click.option(
    "--rate-limit", default=None, help="Requests allowed, e.g. 1000/minute (default INFERQ_RATE_LIMIT)."
)
@click.pass_obj
def keys_create(settings: Settings, tenant: str, admin: bool, rate_limit: str | None) -> None:
    """Create a key; the key is printed alone on the last line (only its hash is stored).

    Example: inferq keys create --tenant acme --admin
    """
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
    """List keys: id, tenant, prefix, admin, rate limit, created, revoked (never the keys themselves).

    Example: inferq keys list --tenant acme
    """
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
    """Revoke a key by id: it stops authenticating at once.

    Example: inferq keys revoke 9b1f4c2e7d3a4f6b8c0e1d2f3a4b5c6d
    """
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
    """The registry database.

    Example: inferq db upgrade
    """


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
def db_upgrade(settings: Settings, revision: str) -> None:
    """Apply the Alembic migrations.

    Example: inferq db upgrade --revision head
    """
    from registry.db import upgrade

    upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}: {settings.database_url.split('@')[-1]}")


# --- client commands (talk to the API at INFERQ_URL with INFERQ_API_KEY, through inferq.client) ---

# Exit codes of the client commands (docs/cli.md); click itself exits 2 on a usage error.
EXIT_OK = 0
EXIT_ERROR = 1  # the API refused or could not be reached, or a local file could not be used
EXIT_FAILED = 3  # the batch ended failed
EXIT_CANCELLED = 4  # the batch ended cancelled
EXIT_TIMEOUT = 5  # --timeout passed before the batch ended (it runs on)
EXIT_INTERRUPTED = 130  # Ctrl-C while waiting (the batch runs on)
BATCH_EXIT = {"completed": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}


def api(settings: Settings) -> Client:
    from inferq.client import Client

    return Client(settings.url, settings.api_key)


def problem_message(exc: Exception, settings: Settings | None = None) -> str:
    """What to print for an SDK error: the problem, and a hint where one helps."""
    from inferq.client import ApiError, ApiUnreachable, Unauthorized

    text = exc.describe() if isinstance(exc, ApiError) else str(exc)
    if isinstance(exc, ApiUnreachable) and exc.title == "API unreachable":
        text += " (is the API running? INFERQ_URL says where it is)"
    elif isinstance(exc, Unauthorized):
        text += " (INFERQ_API_KEY is " + (
            "not set)" if settings is not None and not settings.api_key else "wrong)"
        )
    return text


@contextlib.contextmanager
def client_errors(settings: Settings | None = None) -> Iterator[None]:
    """SDK errors become one clean line on stderr and exit 1 (no traceback)."""
    from inferq.client import ClientError

    try:
        yield
    except ClientError as exc:
        raise click.ClickException(problem_message(exc, settings)) from None


def run_client(call: Callable[[], Any]) -> Any:
    """Run an API call; a problem answer becomes a clean CLI error (exit 1)."""
    with client_errors():
        return call()


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def echo_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain text table, columns as wide as their widest cell."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def when(stamp: str | None) -> str:
    """An API timestamp as people read it (UTC, to the second)."""
    return stamp.replace("T", " ")[:19] if stamp else "-"


def json_option(help_text: str = "Print JSON (for scripts) instead of text.") -> Callable[[Any], Any]:
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def byte_bar(description: str, total: int | None) -> Any:
    """A progress bar of bytes on stderr (shown only on a terminal)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=None,
        leave=False,
    )


def bar_progress(bar: Any) -> Callable[[int, int | None], None]:
    """An SDK ``progress(done, total)`` callback that moves ``bar``."""

    def progress(done: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return progress


@main.group()
def models() -> None:
    """The model registry (INFERQ_URL, INFERQ_API_KEY; writes need an admin key).

    Example: inferq models list --status ready
    """


@models.command("list")
@click.option("--name")
@click.option("--status")
@click.option("--framework")
@click.option("--label", "labels", multiple=True, help="key:value, repeatable (all must match)")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@json_option("Print the raw JSON page.")
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
    """List models, newest first.

    Example: inferq models list --status ready --label team:vision
    """
    with client_errors(settings):
        page = api(settings).models.list(name, status, framework, labels, limit, offset)
    if as_json:
        echo_json(page)
        return
    rows = []
    for model in page["data"]:
        gpus = ",".join(f"{d['gpu']}:{d['status']}" for d in model["deployments"]) or "-"
        rows.append([model["id"], model["name"], model["version"], model["status"], gpus])
    echo_table(["ID", "NAME", "VERSION", "STATUS", "GPUS"], rows)
    click.echo(f"{len(page['data'])} of {page['total']} (offset {page['offset']})")


@models.command("show")
@click.argument("ref")
@json_option("JSON either way (a model is a nested record); accepted like on every client command.")
@click.pass_obj
def models_show(settings: Settings, ref: str, as_json: bool) -> None:
    """Show a model (JSON) by id or NAME:VERSION.

    Example: inferq models show digits:1
    """
    with client_errors(settings):
        echo_json(api(settings).models.find(ref))


@models.command("register")
@click.option("--file", "path", type=click.File("r"), help="A model as JSON (- for stdin).")
@click.option(
    "--from-repository",
    "model_dir",
    type=click.Path(exists=True, file_okay=False),
    help="A model folder of a Triton repository (config.pbtxt); registers each version.",
)
@click.option("--label", "labels", multiple=True, help="key:value added to each registered model.")
@json_option()
@click.pass_obj
def models_register(
    settings: Settings, path: Any, model_dir: str | None, labels: tuple[str, ...], as_json: bool
) -> None:
    """Register a model version (from a JSON file or a Triton model folder).

    Example: inferq models register --from-repository models/iris --label team:tabular
    """
    from pathlib import Path

    from registry.triton_repository import describe_model_dir

    if (path is None) == (model_dir is None):
        raise click.UsageError("give exactly one of --file or --from-repository")
    try:
        bodies = [json.load(path)] if path is not None else describe_model_dir(Path(model_dir))  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.ClickException(f"not a model description: {exc}") from None
    extra = dict(label.split(":", 1) for label in labels if ":" in label)
    client = api(settings)
    for body in bodies:
        if extra:
            body["labels"] = {**body.get("labels", {}), **extra}
        with client_errors(settings):
            model = client.models.register(body)
        if as_json:
            echo_json(model)
        else:
            click.echo(f"registered {model['name']}:{model['version']} as {model['id']}")


@models.command("deploy")
@click.argument("ref")
@click.option("--gpus", required=True, help="Comma-separated GPU indexes, e.g. 0,1")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until ready or failed.")
@click.option("--timeout", type=float, default=600, show_default=True)
@json_option()
@click.pass_obj
def models_deploy(settings: Settings, ref: str, gpus: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Load a model on GPUs (by id or NAME:VERSION); exits 1 if the deploy failed.

    Example: inferq models deploy iris:1 --gpus 0,1
    """
    import time

    try:
        gpu_list = [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        raise click.BadParameter("comma-separated integers", param_hint="--gpus") from None
    client = api(settings)
    with client_errors(settings):
        model = client.models.find(ref)
        model = client.models.deploy(model["id"], gpu_list)
        deadline = time.monotonic() + timeout
        while wait and model["status"] == "deploying" and time.monotonic() < deadline:
            time.sleep(0.5)
            model = client.models.get(model["id"])
    if as_json:
        echo_json(model)
    else:
        for deployment in model["deployments"]:
            click.echo(f"gpu {deployment['gpu']}: {deployment['status']} {deployment['message']}".rstrip())
        click.echo(f"{model['name']}:{model['version']} {model['status']}")
    if model["status"] == "failed":
        sys.exit(EXIT_ERROR)


@models.command("undeploy")
@click.argument("ref")
@click.option("--gpus", default=None, help="Comma-separated GPU indexes (default: all).")
@json_option()
@click.pass_obj
def models_undeploy(settings: Settings, ref: str, gpus: str | None, as_json: bool) -> None:
    """Unload a model from GPUs; the router stops sending it there first.

    Example: inferq models undeploy iris:1 --gpus 1
    """
    client = api(settings)
    try:
        gpu_list = [int(g) for g in gpus.split(",")] if gpus else None
    except ValueError:
        raise click.BadParameter("comma-separated integers", param_hint="--gpus") from None
    with client_errors(settings):
        model = client.models.find(ref)
        model = client.models.undeploy(model["id"], gpu_list)
    if as_json:
        echo_json(model)
        return
    for warning in model.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{model['name']}:{model['version']} {model['status']}")


@models.command("stats")
@click.argument("ref")
@json_option("JSON either way (figures overall and per GPU); accepted like on every client command.")
@click.pass_obj
def models_stats(settings: Settings, ref: str, as_json: bool) -> None:
    """Requests, errors and latency percentiles of a model (JSON): with an admin key the platform's,
    overall and per GPU; with a tenant key those of the tenant's own requests.

    Example: inferq models stats digits:1
    """
    client = api(settings)
    with client_errors(settings):
        echo_json(client.models.stats(client.models.find(ref)["id"]))


@models.command("delete")
@click.argument("ref")
@json_option("Print the deleted model's id, name and version as JSON.")
@click.pass_obj
def models_delete(settings: Settings, ref: str, as_json: bool) -> None:
    """Delete a model version that is not deployed.

    Example: inferq models delete iris:2
    """
    client = api(settings)
    with client_errors(settings):
        model = client.models.find(ref)
        client.models.delete(model["id"])
    if as_json:
        echo_json({"id": model["id"], "name": model["name"], "version": model["version"], "deleted": True})
        return
    click.echo(f"deleted {model['name']}:{model['version']}")


# --- sync inference ---------------------------------------------------------------------


def parse_input(spec: str) -> tuple[str, Any]:
    """``NAME=@FILE.npy``, ``NAME=JSON`` or ``NAME:DATATYPE=JSON`` -> (name, array or protocol tensor)."""
    import numpy as np

    name, sep, value = spec.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{spec!r}: NAME=@FILE.npy or NAME[:DATATYPE]=JSON", param_hint="--input")
    name, _, datatype = name.partition(":")
    try:
        if value.startswith("@"):
            array = np.load(value[1:], allow_pickle=False)
        else:
            array = np.asarray(json.loads(value))
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{spec!r}: {exc}", param_hint="--input") from None
    if datatype:
        from inferq.tensors import NUMPY_DTYPES

        if datatype.upper() not in NUMPY_DTYPES:
            raise click.BadParameter(f"unknown datatype {datatype!r}", param_hint="--input")
        return name, array.astype(NUMPY_DTYPES[datatype.upper()])
    if array.dtype == np.float64:
        array = array.astype(np.float32)  # what models take; say :FP64 for doubles
    return name, array


@main.command("infer")
@click.argument("model")
@click.option("--version", default=None, help="Model version (default: a ready one).")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=@FILE.npy|NAME[:DATATYPE]=JSON",
    help="An input tensor, repeatable: a .npy file, or JSON (floats go as FP32, integers as INT64 "
    "unless :DATATYPE says).",
)
@click.option("--body", default=None, help="A whole Open Inference Protocol body: JSON, or @FILE.json.")
@click.option("--output", "outputs", multiple=True, help="Only these outputs (repeatable).")
@click.option("--timeout", type=float, default=30, show_default=True, help="Seconds to wait for the answer.")
@json_option("Print the outputs as JSON: {name: {shape, dtype, data}}.")
@click.pass_obj
def infer_command(
    settings: Settings,
    model: str,
    version: str | None,
    inputs: tuple[str, ...],
    body: str | None,
    outputs: tuple[str, ...],
    timeout: float,
    as_json: bool,
) -> None:
    """Run one sync inference and print its outputs.

    Example: inferq infer digits --input input=@rows.npy --output label
    """
    import numpy as np

    if bool(inputs) == (body is not None):
        raise click.UsageError("give --input (one or more) or --body")
    tensors: Any
    if body is not None:
        try:
            text = open(body[1:]).read() if body.startswith("@") else body  # noqa: SIM115
            tensors = json.loads(text)["inputs"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise click.BadParameter(
                f"not an inference body with inputs: {exc}", param_hint="--body"
            ) from None
    else:
        tensors = dict(parse_input(spec) for spec in inputs)
    with client_errors(settings):
        answer = api(settings).infer(model, tensors, version, list(outputs) or None, timeout)
    if as_json:
        echo_json(
            {
                name: {"shape": list(a.shape), "dtype": str(a.dtype), "data": a.tolist()}
                for name, a in answer.items()
            }
        )
        return
    for name, array in answer.items():
        text = np.array2string(array, threshold=200, max_line_width=100)
        click.echo(f"{name} {array.dtype} {list(array.shape)}\n{text}")


# --- files --------------------------------------------------------------------------------


def upload_with_bar(settings: Settings, path: str) -> Any:
    """Upload ``path`` (``-``: stdin) with a progress bar; the file object."""
    client = api(settings)
    with byte_bar("upload", None) as bar, client_errors(settings):
        if path == "-":
            return client.files.upload(sys.stdin.buffer, filename="stdin.jsonl", progress=bar_progress(bar))
        return client.files.upload(path, progress=bar_progress(bar))


def file_row(file: Any) -> list[Any]:
    lines = file.get("line_count")
    return [
        file["id"],
        file["purpose"],
        file["bytes"],
        "-" if lines is None else lines,
        when(file["created_at"]),
        file["filename"],
    ]


FILE_HEADERS = ["ID", "PURPOSE", "BYTES", "LINES", "CREATED", "FILENAME"]


@main.group()
def files() -> None:
    """Files: batch inputs, and the output and error files of batches.

    Example: inferq files list --purpose batch_input
    """


@files.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@json_option()
@click.pass_obj
def files_upload(settings: Settings, path: str, as_json: bool) -> None:
    """Upload a JSONL file (streamed, with a progress bar); prints its id.

    Example: inferq files upload requests.jsonl
    """
    file = upload_with_bar(settings, path)
    if as_json:
        echo_json(file)
    else:
        click.echo(f"uploaded {file['filename']} ({file['bytes']} bytes) as file {file['id']}")


@files.command("list")
@click.option("--purpose", type=click.Choice(["batch_input", "batch_output", "batch_error"]))
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--after", default=None, help="The last id of the previous page.")
@click.option("--all", "every", is_flag=True, help="Every file, all pages.")
@json_option()
@click.pass_obj
def files_list(
    settings: Settings, purpose: str | None, limit: int, after: str | None, every: bool, as_json: bool
) -> None:
    """List your files, newest first.

    Example: inferq files list --purpose batch_input --limit 5
    """
    client = api(settings)
    with client_errors(settings):
        if every:
            items = list(client.files.iter(purpose))
            page: Any = {"data": items, "has_more": False, "total": len(items), "last_id": None}
        else:
            page = client.files.list(purpose, limit, after)
    if as_json:
        echo_json(page if not every else items)
        return
    echo_table(FILE_HEADERS, [file_row(f) for f in page["data"]])
    more = f"; next page: --after {page['last_id']}" if page["has_more"] else ""
    click.echo(f"{len(page['data'])} of {page['total']}{more}")


@files.command("show")
@click.argument("file_id")
@json_option()
@click.pass_obj
def files_show(settings: Settings, file_id: str, as_json: bool) -> None:
    """Show a file.

    Example: inferq files show 6f0c0e3a9d1b4c52a2f1e8d7c6b5a4f3
    """
    with client_errors(settings):
        file = api(settings).files.get(file_id)
    if as_json:
        echo_json(file)
        return
    for key, value in file.items():
        click.echo(f"{key + ':':12} {value}")


@files.command("delete")
@click.argument("file_id")
@json_option()
@click.pass_obj
def files_delete(settings: Settings, file_id: str, as_json: bool) -> None:
    """Delete a file (not the input of a batch still running).

    Example: inferq files delete 6f0c0e3a9d1b4c52a2f1e8d7c6b5a4f3
    """
    with client_errors(settings):
        deleted = api(settings).files.delete(file_id)
    if as_json:
        echo_json(deleted)
    else:
        click.echo(f"deleted file {file_id}")


def download(settings: Settings, file_id: str | None, output: str) -> dict[str, Any]:
    """Stream a file to ``output`` (``-``: stdout; else written beside, then renamed into place)
    with a progress bar; what was written. ``file_id`` None writes an empty file."""
    from pathlib import Path

    client = api(settings)
    summary: dict[str, Any] = {"file_id": file_id, "path": output, "bytes": 0, "lines": 0}
    partial = Path(f"{output}.partial") if output != "-" else None
    try:
        with contextlib.ExitStack() as stack:
            out = sys.stdout.buffer if partial is None else stack.enter_context(partial.open("wb"))
            if file_id is not None:
                with client_errors(settings):
                    size = client.files.get(file_id)["bytes"]
                    bar = stack.enter_context(byte_bar("download", size))
                    for piece in client.files.content(file_id, progress=bar_progress(bar)):
                        out.write(piece)
                        summary["bytes"] += len(piece)
                        summary["lines"] += piece.count(b"\n")
            out.flush()
        if partial is not None:
            os.replace(partial, output)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        if partial is not None and partial.exists():
            partial.unlink()
    return summary


def output_option() -> Callable[[Any], Any]:
    return click.option(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="Where to write (- for stdout); written whole or not at all.",
    )


@files.command("download")
@click.argument("file_id")
@output_option()
@json_option("Print what was written as JSON (on stderr with -o -).")
@click.pass_obj
def files_download(settings: Settings, file_id: str, output: str, as_json: bool) -> None:
    """Download a file's bytes (streamed, with a progress bar).

    Example: inferq files download 6f0c0e3a9d1b4c52a2f1e8d7c6b5a4f3 -o input-copy.jsonl
    """
    report_download(download(settings, file_id, output), as_json)


def report_download(summary: dict[str, Any], as_json: bool) -> None:
    to_stderr = summary["path"] == "-"
    if as_json:
        click.echo(json.dumps(summary), err=to_stderr)
    else:
        where = "stdout" if to_stderr else summary["path"]
        click.echo(f"wrote {summary['lines']} lines ({summary['bytes']} bytes) to {where}", err=to_stderr)


# --- batches ------------------------------------------------------------------------------


def batch_line(batch: Any) -> str:
    counts = batch["request_counts"]
    return (
        f"batch {batch['id']} {batch['status']}: {counts['total']} lines, "
        f"{counts['completed']} completed, {counts['failed']} failed"
    )


def batch_summary(batch: Any) -> list[str]:
    """What people want to know of a batch that ended."""
    lines = [batch_line(batch)]
    for error in batch.get("errors") or []:
        lines.append(f"  error {error.get('code')}: {error.get('message')}")
    if batch.get("output_file_id"):
        lines.append(f"  output file {batch['output_file_id']}: inferq results {batch['id']} -o output.jsonl")
    if batch.get("error_file_id"):
        lines.append(
            f"  error file  {batch['error_file_id']}: inferq results {batch['id']} --errors -o errors.jsonl"
        )
    return lines


def follow(
    settings: Settings, batch_id: str, timeout: float | None, poll: float, as_json: bool, quiet: bool = False
) -> int:
    """Wait for a batch with a progress bar of its lines; print how it ended (nothing when ``quiet``);
    its exit code."""
    from tqdm import tqdm

    from inferq.client import WaitTimeout

    client = api(settings)
    with tqdm(desc="lines", unit="line", file=sys.stderr, disable=None, leave=False) as bar:

        def progress(batch: Any) -> None:
            counts = batch["request_counts"]
            if counts["total"] and bar.total != counts["total"]:
                bar.total = counts["total"]
            bar.set_postfix_str(f"{batch['status']}, {counts['failed']} failed", refresh=False)
            bar.update(counts["completed"] + counts["failed"] - bar.n)

        try:
            with client_errors(settings):
                try:
                    batch = client.batches.wait(batch_id, poll=poll, timeout=timeout, progress=progress)
                except WaitTimeout as exc:
                    bar.close()
                    if as_json:
                        echo_json(exc.batch)
                    click.echo(f"{exc}; it runs on: inferq batches wait {batch_id}", err=True)
                    return EXIT_TIMEOUT
        except KeyboardInterrupt:
            bar.close()
            click.echo(f"\nstopped waiting; the batch runs on: inferq batches wait {batch_id}", err=True)
            return EXIT_INTERRUPTED
    if as_json:
        echo_json(batch)
    elif not quiet:
        click.echo("\n".join(batch_summary(batch)))
    return BATCH_EXIT.get(batch["status"], EXIT_ERROR)


def parse_metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--metadata")
        metadata[key] = value
    return metadata


WAIT_OPTIONS = [
    click.option(
        "--timeout", type=float, default=None, help="Give up waiting after this many seconds (exit 5)."
    ),
    click.option("--poll", type=float, default=2.0, show_default=True, help="Seconds between polls."),
]


def wait_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(WAIT_OPTIONS):
        command = option(command)
    return command


@main.command("submit")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--model", required=True, help="Model name.")
@click.option("--version", default=None, help="Model version (default: a ready one).")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Kept with the batch (repeatable).")
@click.option(
    "--idempotency-key", default=None, help="The same key again gives the same batch, not a second."
)
@click.option("--wait", is_flag=True, help="Follow the batch to its end with a progress bar.")
@wait_options
@json_option("Print the batch as JSON (the final one with --wait).")
@click.option(
    "-q", "--quiet", is_flag=True, help="Print only the batch id (the exit code says how it ended)."
)
@click.pass_obj
def submit(
    settings: Settings,
    path: str,
    model: str,
    version: str | None,
    metadata: tuple[str, ...],
    idempotency_key: str | None,
    wait: bool,
    timeout: float | None,
    poll: float,
    as_json: bool,
    quiet: bool,
) -> None:
    """Upload a JSONL file and run a batch over it.

    One request per line: {"custom_id": "...", "inputs": [...]}. Exit codes: 0 submitted (with
    --wait: completed), 1 API or input error, 2 usage, 3 batch failed, 4 cancelled, 5 --timeout.

    Example: inferq submit requests.jsonl --model digits --metadata run=nightly --wait
    """
    from inferq.client import ClientError

    meta = parse_metadata(metadata)
    client = api(settings)
    with client_errors(settings):  # a wrong key or model says so before the upload, not after
        if version is not None:
            client.models.by_name(model, version)
        elif not client.models.list(name=model, limit=1)["total"]:
            raise click.ClickException(f"no model named {model!r} (inferq models list)")
    file = upload_with_bar(settings, path)
    if not (as_json or quiet):
        click.echo(f"uploaded {file['filename']} ({file['bytes']} bytes) as file {file['id']}", err=True)
    try:
        batch = client.batches.create(model, file["id"], version, meta, idempotency_key)
    except ClientError as exc:
        with contextlib.suppress(ClientError):  # nothing refers to the upload: take it back
            client.files.delete(file["id"])
        raise click.ClickException(problem_message(exc, settings)) from None
    if not wait:
        if as_json:
            echo_json(batch)
        elif quiet:
            click.echo(batch["id"])
        else:
            click.echo(f"batch {batch['id']} {batch['status']}; follow it: inferq batches wait {batch['id']}")
        return
    if not (as_json or quiet):
        click.echo(f"batch {batch['id']} {batch['status']}", err=True)
    code = follow(settings, batch["id"], timeout, poll, as_json, quiet)
    if quiet:
        click.echo(batch["id"])
    sys.exit(code)


@main.command("results")
@click.argument("batch_id")
@output_option()
@click.option("--errors", is_flag=True, help="The error file instead of the output file.")
@json_option("Print what was written as JSON (on stderr with -o -).")
@click.pass_obj
def results(settings: Settings, batch_id: str, output: str, errors: bool, as_json: bool) -> None:
    """Download a finished batch's output (or error) lines, streamed, with a progress bar.

    A batch with no such lines gives an empty file. Exit 1 if the batch has not ended.

    Example: inferq results b41d0c9e8f7a4b6c9d2e1f0a3b5c7d9e -o output.jsonl
    """
    from inferq.client import FINAL_STATUSES

    with client_errors(settings):
        batch = api(settings).batches.get(batch_id)
    if batch["status"] not in FINAL_STATUSES:
        raise click.ClickException(
            f"batch {batch_id} is {batch['status']}: results exist once it has ended "
            f"(inferq batches wait {batch_id})"
        )
    file_id = batch["error_file_id"] if errors else batch["output_file_id"]
    summary = download(settings, file_id, output)
    report_download({"batch_id": batch_id, **summary}, as_json)


@main.group()
def batches() -> None:
    """Batches: list, show, cancel, wait (create one with inferq submit).

    Example: inferq batches list --status in_progress
    """


@batches.command("list")
@click.option(
    "--status",
    type=click.Choice(
        [
            "validating",
            "queued",
            "in_progress",
            "finalizing",
            "completed",
            "failed",
            "cancelling",
            "cancelled",
        ]
    ),
)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--after", default=None, help="The last id of the previous page.")
@click.option("--all", "every", is_flag=True, help="Every batch, all pages.")
@json_option()
@click.pass_obj
def batches_list(
    settings: Settings, status: str | None, limit: int, after: str | None, every: bool, as_json: bool
) -> None:
    """List your batches, newest first.

    Example: inferq batches list --status in_progress
    """
    client = api(settings)
    with client_errors(settings):
        if every:
            items: list[Any] = list(client.batches.iter(status))
            page: Any = {"data": items, "has_more": False, "total": len(items), "last_id": None}
        else:
            page = client.batches.list(status, limit, after)
    if as_json:
        echo_json(page if not every else items)
        return
    rows = []
    for b in page["data"]:
        counts = b["request_counts"]
        rows.append(
            [
                b["id"],
                b["status"],
                f"{b['model']}:{b['version']}",
                f"{b['progress']}%",
                counts["total"],
                counts["completed"],
                counts["failed"],
                when(b["created_at"]),
            ]
        )
    echo_table(["ID", "STATUS", "MODEL", "PROGRESS", "LINES", "COMPLETED", "FAILED", "CREATED"], rows)
    more = f"; next page: --after {page['last_id']}" if page["has_more"] else ""
    click.echo(f"{len(page['data'])} of {page['total']}{more}")


@batches.command("show")
@click.argument("batch_id")
@json_option()
@click.pass_obj
def batches_show(settings: Settings, batch_id: str, as_json: bool) -> None:
    """Show a batch: status, counts, progress, times, files.

    Example: inferq batches show b41d0c9e8f7a4b6c9d2e1f0a3b5c7d9e
    """
    with client_errors(settings):
        batch = api(settings).batches.get(batch_id)
    if as_json:
        echo_json(batch)
        return
    counts = batch["request_counts"]
    fields = [
        ("id", batch["id"]),
        ("status", batch["status"]),
        ("model", f"{batch['model']}:{batch['version']}"),
        ("progress", f"{batch['progress']}%"),
        ("lines", f"{counts['total']} ({counts['completed']} completed, {counts['failed']} failed)"),
        ("input", batch.get("input_file_id") or "-"),
        ("output", batch.get("output_file_id") or "-"),
        ("errors", batch.get("error_file_id") or "-"),
    ]
    stamps: dict[str, Any] = dict(batch)
    for stamp in ("created_at", "started_at", "finalizing_at", "completed_at", "failed_at", "cancelled_at"):
        if stamps.get(stamp):
            fields.append((stamp.removesuffix("_at"), when(stamps[stamp])))
    for key, value in batch["metadata"].items():
        fields.append((f"metadata {key}", value))
    for error in batch.get("errors") or []:
        fields.append(("why", f"{error.get('code')}: {error.get('message')}"))
    for key, value in fields:
        click.echo(f"{key + ':':12} {value}")


@batches.command("cancel")
@click.argument("batch_id")
@json_option()
@click.pass_obj
def batches_cancel(settings: Settings, batch_id: str, as_json: bool) -> None:
    """Cancel a batch: what finished stays, the rest ends in the error file as cancelled.

    Example: inferq batches cancel b41d0c9e8f7a4b6c9d2e1f0a3b5c7d9e
    """
    with client_errors(settings):
        batch = api(settings).batches.cancel(batch_id)
    if as_json:
        echo_json(batch)
    else:
        click.echo(f"{batch_line(batch)}; inferq batches wait {batch_id} follows it to the end")


@batches.command("wait")
@click.argument("batch_id")
@wait_options
@json_option("Print the final batch as JSON.")
@click.pass_obj
def batches_wait(
    settings: Settings, batch_id: str, timeout: float | None, poll: float, as_json: bool
) -> None:
    """Wait for a batch to end, with a progress bar.

    Exit codes: 0 completed, 1 API error, 3 failed, 4 cancelled, 5 --timeout passed.

    Example: inferq batches wait b41d0c9e8f7a4b6c9d2e1f0a3b5c7d9e --timeout 3600
    """
    sys.exit(follow(settings, batch_id, timeout, poll, as_json))


@main.command("settings")
@click.pass_obj
def show_settings(settings: Settings) -> None:
    """Print the effective settings (secrets masked).

    Example: INFERQ_GPUS=0 inferq settings
    """
    click.echo(settings.describe())


if __name__ == "__main__":
    main()
