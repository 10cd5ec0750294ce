#!/usr/bin/env bash
# Install the server into .venv (only when pyproject.toml changed since the last install) and
# start it; arguments go to `headscope serve`.
#
# With no arguments it serves roneneldan/TinyStories-1M and the TinyStories validation split from
# the Hugging Face hub (cached after the first start), and trains the probes at first start.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.headscope-installed
wanted="server $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x .venv/bin/headscope ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  bash scripts/setup.sh server
  echo "$wanted" > "$stamp"
fi
# shellcheck disable=SC1091
. .venv/bin/activate
exec headscope serve "$@"
