"""Children of the launcher stop with it: on stop(), and when the launcher is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.localstack import ManagedProcess


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    # A shell that starts a grandchild, like Triton starting its Python stubs.
    process = ManagedProcess(
        "sh", ["sh", "-c", "sleep 60 & echo $! > grandchild; wait"], cwd=str(tmp_path)
    ).start()
    deadline = time.monotonic() + 5
    while not (tmp_path / "grandchild").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int((tmp_path / "grandchild").read_text())
    process.stop(timeout=5)
    assert not process.alive() and gone(grandchild)


def test_children_die_when_the_launcher_is_killed(tmp_path: Path) -> None:
    launcher = tmp_path / "parent.py"
    launcher.write_text(
        "import sys, time\n"
        "from launcher.localstack import ManagedProcess\n"
        "child = ManagedProcess('sleep', ['sleep', '60']).start()\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen([sys.executable, str(launcher)], stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not gone(child, timeout=0.2)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
    assert gone(child)
