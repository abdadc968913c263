#!/usr/bin/env bash
# Installs what inferq needs on a Debian/Ubuntu machine with Python 3.11, and nothing that is
# already there: the virtual env (.venv) with inferq and its pinned dependencies, the shared
# libpython that Triton's Python backend links, and redis-server when no Redis is reachable.
#   scripts/bootstrap.sh          runtime only
#   scripts/bootstrap.sh --dev    also the test and lint tools (and Chromium for the /docs browser test)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_updated=""
apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "bootstrap: please install $* (no apt-get here)" >&2
    exit 1
  fi
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  echo "bootstrap: installing $* ..."
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

command -v "$PYTHON" >/dev/null || apt_install python3.11
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3.11-venv

# Triton's Python-backend stub loads libpython3.11.so.1.0.
if ! "$PYTHON" - <<'PY'
import os, sysconfig, subprocess
libdir = sysconfig.get_config_var("LIBDIR") or ""
found = os.path.exists(os.path.join(libdir, "libpython3.11.so.1.0")) or \
    "libpython3.11.so.1.0" in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
raise SystemExit(0 if found else 1)
PY
then
  apt_install libpython3.11
fi

# Redis: reuse a running one; otherwise make sure `inferq up` (and the tests) can start one.
if ! command -v redis-server >/dev/null && { [ -n "$extras" ] || ! tcp_open 127.0.0.1 6379; }; then
  apt_install redis-server
fi

# The /docs browser test drives headless Chromium with Debian's chromedriver (selenium).
if [ -n "$extras" ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  apt_install chromium chromium-driver
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv ..."
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
echo "bootstrap: installing inferq$extras into .venv ..."
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".$extras"
