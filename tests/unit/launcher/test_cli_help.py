"""Every ``inferq`` command and group, platform and client alike, has ``--help`` with an example;
every client command takes ``--json``."""

from __future__ import annotations

from collections.abc import Iterator

import click
from click.testing import CliRunner

from launcher.cli import main

CLIENT_ROOTS = {"models", "files", "batches", "infer", "submit", "results"}


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_command_has_help_with_an_example() -> None:
    paths = list(command_paths(main))
    assert ("keys", "revoke") in paths and ("db", "upgrade") in paths and () in paths
    for path in paths:
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        examples = [line for line in result.output.splitlines() if line.strip().startswith("Example: ")]
        assert examples, (path, result.output)
        assert " ".join(["inferq", *path]) in examples[0], (path, examples)


def test_every_client_command_takes_json() -> None:
    for path in command_paths(main):
        command = main
        for name in path:
            assert isinstance(command, click.Group)
            command = command.commands[name]  # type: ignore[assignment]
        if not path or path[0] not in CLIENT_ROOTS or isinstance(command, click.Group):
            continue
        assert "--json" in [opt for param in command.params for opt in getattr(param, "opts", [])], path
