#!/usr/bin/env bash
# Install the server into .venv (if needed) and start it; arguments go to `headscope serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh server
# shellcheck disable=SC1091
. .venv/bin/activate
exec headscope serve "$@"
