"""``inferq submit / results / batches / files`` against the API over real HTTP: the outcomes,
the files written, and the exit codes and one-line errors scripts rely on."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner, Result

from launcher.cli import main
from tests.fixtures import Stack
from tests.integration.batch_files import make_input
from tests.integration.test_infer import local_onnx

pytestmark = pytest.mark.integration


def run(api_url: str, key: str, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"INFERQ_URL": api_url, "INFERQ_API_KEY": key})


def test_submit_wait_then_results_list_and_show(stack: Stack, api_url: str, tmp_path: Path) -> None:
    expected = make_input(3_000, bad_every=30, prefix=f"cli-{uuid.uuid4().hex[:4]}")
    path = tmp_path / "requests.jsonl"
    path.write_bytes(expected.data)
    key = stack.user_key
    submitted = run(
        api_url,
        key,
        "submit",
        str(path),
        "--model",
        "digits",
        "--metadata",
        "run=cli",
        "--wait",
        "--poll",
        "0.2",
    )
    assert submitted.exit_code == 0, submitted.output
    counts = f"{expected.total} lines, {len(expected.rows)} completed, {len(expected.errors)} failed"
    assert "completed: " + counts in submitted.stdout
    assert "uploaded requests.jsonl" in submitted.stderr
    batch_id = submitted.stdout.split()[1]

    out = tmp_path / "out.jsonl"
    written = run(api_url, key, "results", batch_id, "-o", str(out))
    assert written.exit_code == 0, written.output
    assert f"wrote {len(expected.rows)} lines" in written.output and not Path(f"{out}.partial").exists()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == list(expected.rows)
    labels, _ = local_onnx(np.stack(list(expected.rows.values())))
    assert [next(o for o in line["outputs"] if o["name"] == "label")["data"][0] for line in lines] == (
        labels.tolist()
    )
    errors = run(api_url, key, "results", batch_id, "--errors", "-o", "-")
    assert errors.exit_code == 0, errors.output
    assert len(errors.stdout.splitlines()) == len(expected.errors)
    assert all("error" in json.loads(line) for line in errors.stdout.splitlines())

    listed = run(api_url, key, "batches", "list", "--json", "--limit", "5")
    assert listed.exit_code == 0 and batch_id in [b["id"] for b in json.loads(listed.stdout)["data"]]
    table = run(api_url, key, "batches", "list", "--status", "completed")
    assert table.stdout.startswith("ID ") and batch_id in table.stdout and "digits:1" in table.stdout
    shown = run(api_url, key, "batches", "show", batch_id)
    assert (
        shown.exit_code == 0
        and "status:      completed" in shown.stdout
        and "metadata run: cli" in shown.stdout
    )
    as_json = json.loads(run(api_url, key, "batches", "show", batch_id, "--json").stdout)
    assert as_json["id"] == batch_id and as_json["metadata"] == {"run": "cli"}
    files = json.loads(run(api_url, key, "files", "show", as_json["output_file_id"], "--json").stdout)
    assert files["purpose"] == "batch_output" and files["line_count"] == len(expected.rows)
    late = run(api_url, key, "batches", "cancel", batch_id)
    assert late.exit_code == 1 and late.stderr.startswith("Error: 409 ") and "Traceback" not in late.output


def test_exit_codes_for_timeout_cancelled_and_failed(stack: Stack, api_url: str, tmp_path: Path) -> None:
    key = stack.user_key
    big = tmp_path / "big.jsonl"
    big.write_bytes(make_input(20_000, prefix=f"cli-cancel-{uuid.uuid4().hex[:4]}").data)
    submitted = run(api_url, key, "submit", str(big), "--model", "digits", "--json")
    assert submitted.exit_code == 0, submitted.output
    batch_id = json.loads(submitted.stdout)["id"]

    timed_out = run(api_url, key, "batches", "wait", batch_id, "--timeout", "0.05", "--json")
    assert timed_out.exit_code == 5, timed_out.output
    assert json.loads(timed_out.stdout)["id"] == batch_id and "it runs on" in timed_out.stderr
    early = run(api_url, key, "results", batch_id, "-o", str(tmp_path / "early.jsonl"))
    assert early.exit_code == 1 and "results exist once it has ended" in early.stderr
    assert not (tmp_path / "early.jsonl").exists()

    cancelled = run(api_url, key, "batches", "cancel", batch_id)
    assert cancelled.exit_code == 0 and "cancelling" in cancelled.stdout, cancelled.output
    waited = run(api_url, key, "batches", "wait", batch_id, "--poll", "0.2")
    assert waited.exit_code == 4, waited.output
    assert f"batch {batch_id} cancelled" in waited.stdout

    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n\n")  # no request line: the batch itself fails
    failed = run(api_url, key, "submit", str(blank), "--model", "digits", "--wait", "--poll", "0.2")
    assert failed.exit_code == 3, failed.output
    assert "failed" in failed.stdout and "error empty_input:" in failed.stdout
    empty_out = run(api_url, key, "results", failed.stdout.split()[1], "-o", str(tmp_path / "none.jsonl"))
    assert empty_out.exit_code == 0 and (tmp_path / "none.jsonl").read_bytes() == b""


def test_errors_are_one_clean_line(stack: Stack, api_url: str, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_bytes(make_input(1).data)
    wrong_key = run(api_url, "iq_not-a-key", "submit", str(path), "--model", "digits")
    assert wrong_key.exit_code == 1
    assert (
        wrong_key.stderr
        == "Error: 401 Invalid API key: the API key is unknown or revoked (INFERQ_API_KEY is wrong)\n"
    )
    no_key = run(api_url, "", "batches", "list")
    assert no_key.exit_code == 1 and "INFERQ_API_KEY is not set" in no_key.stderr
    down = run("http://127.0.0.1:9", "k", "files", "list")
    assert down.exit_code == 1 and down.stderr.startswith("Error: API unreachable: http://127.0.0.1:9: ")
    assert len(down.stderr.splitlines()) == 1
    unknown = run(api_url, stack.user_key, "submit", str(path), "--model", "no-such-model")
    assert unknown.exit_code == 1 and "no model named 'no-such-model'" in unknown.stderr
    missing = run(api_url, stack.user_key, "batches", "show", "no-such-batch")
    assert (
        missing.exit_code == 1 and missing.stderr == "Error: 404 Batch not found: no batch 'no-such-batch'\n"
    )
    invalid = run(api_url, stack.user_key, "infer", "digits", "--input", "input:FP32=[1, 2]")
    assert (
        invalid.exit_code == 1 and "/inputs/0/shape" in invalid.stderr and "Traceback" not in invalid.output
    )
    usage = run(api_url, stack.user_key, "submit", str(path))
    assert usage.exit_code == 2 and "Missing option '--model'" in usage.stderr
    no_file = run(api_url, stack.user_key, "submit", str(tmp_path / "absent.jsonl"), "--model", "digits")
    assert no_file.exit_code == 2 and "does not exist" in no_file.stderr


def test_every_client_command_has_help_with_an_example() -> None:
    groups = ("models", "files", "batches")
    commands = [("infer",), ("submit",), ("results",)]
    for group in groups:
        command = main.commands[group]
        assert isinstance(command, click.Group)
        commands += [(group, name) for name in command.commands]
    for path in commands:
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0 and "Example: inferq " + " ".join(path) in result.output, path
