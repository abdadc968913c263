#!/usr/bin/env bash
# The run command: install what is missing, then run the whole local stack in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/inferq up "$@"
