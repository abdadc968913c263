"""What ``inferq up`` writes is its owner's alone (0700 directories, 0600 files, from creation),
and no secret is on a command line."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferq.settings import Settings
from launcher.localstack import ManagedProcess, private_dir, private_file, rclone_auth_key, s3_process
from launcher.stack import Stack, api_argv, write_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The usual 022: what is private must be private by itself, not thanks to the umask."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_private_dirs_and_files(tmp_path: Path) -> None:
    assert mode(private_dir(tmp_path / "a" / "b")) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    assert mode(private_dir(loose)) == 0o700  # an existing one is tightened
    assert mode(private_file(tmp_path / "c" / "db.sqlite")) == 0o600
    write_private(tmp_path / "key", "secret\n")
    assert mode(tmp_path / "key") == 0o600 and (tmp_path / "key").read_text() == "secret\n"
    write_private(tmp_path / "key", "other\n")  # replaced whole, same mode
    assert (tmp_path / "key").read_text() == "other\n" and mode(tmp_path / "key") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c", "key", "loose"]


def test_process_logs_are_private(tmp_path: Path) -> None:
    process = ManagedProcess("echo", ["/bin/echo", "hello"], log_path=tmp_path / "logs" / "echo.log").start()
    assert process.popen is not None and process.popen.wait(10) == 0
    assert mode(tmp_path / "logs" / "echo.log") == 0o600


def test_the_s3_secret_is_not_on_the_command_line(tmp_path: Path) -> None:
    process = s3_process(9, tmp_path / "s3", "access", 'Zq9,hu"sh')
    assert not any("Zq9" in part for part in process.argv), process.argv
    assert process.env is not None and process.env["RCLONE_AUTH_KEY"] == '"access,Zq9,hu""sh"'
    assert rclone_auth_key("a", "b") == '"a,b"'
    assert mode(tmp_path / "s3") == 0o700


def test_gunicorn_drops_slow_request_heads() -> None:
    argv = api_argv(Settings(api_keep_alive=7))
    assert argv[argv.index("--keep-alive") + 1] == "7"
    assert argv[argv.index("--worker-class") + 1] == "gevent"


def test_gunicorn_access_log_only_when_asked() -> None:
    assert "--access-logfile" not in api_argv(Settings())
    argv = api_argv(Settings(api_access_log=True))
    assert argv[argv.index("--access-logfile") + 1] == "-"


def test_the_sqlite_registry_and_dev_key_are_private(tmp_path: Path) -> None:
    from tasks.runtime import Services

    settings = Settings(data_dir=str(tmp_path / "data"))
    stack = Stack(settings, say=lambda _: None)
    private_dir(stack.data_dir)
    stack.ensure_database()
    assert mode(tmp_path / "data") == 0o700 and mode(tmp_path / "data" / "inferq.db") == 0o600
    services = Services(settings)
    try:
        key = stack.dev_key(services)
        assert mode(tmp_path / "data" / "dev-api-key") == 0o600
        assert stack.dev_key(services) == key  # reused while valid
    finally:
        services.close()
