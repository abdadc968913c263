"""What docker/ may name, read from the code: settings, ``inferq`` commands and their options (run
with ``os.execve`` caught, so the real argv and environment can be checked), API routes, metrics."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import click
import flower.events
import flower.urls
from click.testing import CliRunner

from inferq.metrics import REGISTRY
from inferq.settings import Settings
from launcher.cli import main

SETTING_VARIABLES = frozenset(f"INFERQ_{f.name.upper()}" for f in dataclasses.fields(Settings))
# Not settings of ours, but read from the environment all the same.
OTHER_VARIABLES = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",  # Settings.cuda_visible_devices (reporting only)
        "FLOWER_BASIC_AUTH",  # Flower's own option
    }
)
KNOWN_VARIABLES = SETTING_VARIABLES | OTHER_VARIABLES
# Commands that become another process (os.execve); the others run in the CLI's own process.
EXEC_COMMANDS = frozenset({"api", "worker", "beat", "flower"})


def resolve(argv: list[str]) -> tuple[click.Command, click.Context]:
    """The ``inferq`` subcommand ``argv`` names, its options parsed as the CLI parses them.

    Raises click's usage errors for an unknown command or option, or a bad value.
    """
    assert argv[0] == "inferq", argv
    command: click.Command = main
    args = list(argv[1:])
    name = "inferq"
    while isinstance(command, click.Group):
        assert args, f"{argv}: a group needs a subcommand"
        name = args.pop(0)
        assert name in command.commands, f"{argv}: no command {name!r} in {sorted(command.commands)}"
        command = command.commands[name]
    return command, command.make_context(name, args)


@dataclasses.dataclass(frozen=True)
class Exec:
    """The process an ``inferq`` command would have become."""

    argv: list[str]
    env: dict[str, str]

    def option(self, name: str) -> str:
        """The value of ``name`` in ``argv`` (``name value`` or ``name=value``)."""
        for index, arg in enumerate(self.argv):
            if arg == name:
                return self.argv[index + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
        raise AssertionError(f"{name} not in {self.argv}")


class _Executed(Exception):
    """Raised in place of ``os.execve``: what the command would have become."""

    def __init__(self, argv: list[str], env: Mapping[str, str]) -> None:
        super().__init__(argv)
        self.exec = Exec(list(argv), dict(env))


def run(argv: list[str], env: Mapping[str, str]) -> Exec:
    """Run ``argv`` (``inferq ...``) with exactly ``env`` as its settings, up to its ``os.execve``."""
    resolve(argv)
    clean: dict[str, str | None] = {k: None for k in os.environ if k in KNOWN_VARIABLES}
    clean.update(env)

    def execve(path: str, args: list[str], environ: Mapping[str, str]) -> None:
        raise _Executed(args, environ)

    with mock.patch.object(os, "execve", execve):
        result = CliRunner().invoke(main, argv[1:], env=clean)
    if isinstance(result.exception, _Executed):
        return result.exception.exec
    raise AssertionError(f"{argv} did not exec: {result.output}{result.exception!r}")


def python_url(healthcheck: list[str]) -> str:
    """The URL a ``python -c "...urlopen('URL'...)"`` health check asks."""
    assert healthcheck[:-1] in (["CMD", "python", "-c"], ["python", "-c"]), healthcheck
    compile(healthcheck[-1], "<healthcheck>", "exec")
    [url] = re.findall(r"urlopen\('([^']+)'", healthcheck[-1])
    return url


@cache
def api_routes() -> frozenset[str]:
    """Every route of the API app."""
    import webapp

    settings = Settings(
        redis_url="redis://unconfigured.invalid:1/0",
        database_url="sqlite:////nonexistent/unconfigured.db",
        s3_endpoint="http://unconfigured.invalid:1",
    )
    return frozenset(rule.rule for rule in webapp.create_app(settings).url_map.iter_rules())


def flower_routes() -> frozenset[str]:
    """Flower's URL patterns (tornado: tuples and URLSpecs), without their ``$``."""
    patterns = (h.regex.pattern if hasattr(h, "regex") else h[0] for h in flower.urls.handlers)
    return frozenset(str(pattern).rstrip("$") for pattern in patterns)


def inferq_metric_names() -> frozenset[str]:
    """Every sample name inferq's registry can export (counters' _total, histograms' _bucket...)."""
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"]}
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, []))
    return frozenset(names)


def flower_metric_names() -> frozenset[str]:
    """The metric names Flower declares (flower/events.py)."""
    return frozenset(re.findall(r"['\"](flower_[a-z_]+)['\"]", Path(flower.events.__file__).read_text()))


def url_host_port(url: str) -> tuple[str, int]:
    """Host and port of ``scheme://[user:pass@]host:port/...``."""
    match = re.match(r"^[a-z+]+://(?:[^@/]*@)?([^:/]+):(\d+)", url)
    assert match, url
    return match.group(1), int(match.group(2))


def settings_from(env: Mapping[str, Any]) -> Settings:
    """Settings from a file's environment, every value as the text a process would see."""
    assert set(env) <= KNOWN_VARIABLES, set(env) - KNOWN_VARIABLES
    return Settings.from_env({k: str(v) for k, v in env.items()})


# --- Compose ------------------------------------------------------------------------------------

# What a user exports (the header says so): Flower's password, and RabbitMQ's URL when it is the broker.
USER_ENV = {"FLOWER_BASIC_AUTH": "admin:generated"}
AMQP_ENV = {**USER_ENV, "INFERQ_BROKER_URL": "amqp://inferq:inferq@rabbitmq:5672//"}


class MissingVariable(Exception):
    """A ``${NAME:?message}`` whose variable is unset (compose refuses to start)."""


VARIABLE = re.compile(
    r"\$(?:(?P<dollar>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` with compose's variable interpolation done (``$$`` becomes ``$``)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("dollar"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        is_set = env.get(name) if op and op.startswith(":") else env.get(name) is not None
        if op in (":-", "-"):
            return env[name] if is_set else arg
        if op in (":?", "?"):
            if not is_set:
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        if op in (":+", "+"):
            return arg if is_set else ""
        return env.get(name, "")

    return VARIABLE.sub(substitute, value)


def variables(value: Any) -> set[str]:
    """Names of the variables ``value`` interpolates."""
    text = json.dumps(value)
    return {m.group("name") or m.group("bare") for m in VARIABLE.finditer(text) if not m.group("dollar")}


def enabled(compose: dict[str, Any], profiles: Iterable[str]) -> set[str]:
    """The services ``docker compose --profile P ... up`` starts."""
    active = set(profiles)
    return {
        name
        for name, service in compose["services"].items()
        if not service.get("profiles") or active & set(service["profiles"])
    }


def hostnames(compose: dict[str, Any], services: set[str]) -> dict[str, str]:
    """Each name that resolves on the compose network -> the service answering it."""
    names = {}
    for name in services:
        names[name] = name
        for network in (compose["services"][name].get("networks") or {}).values():
            for alias in (network or {}).get("aliases", []):
                names[alias] = name
    return names
