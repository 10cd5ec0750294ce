#!/usr/bin/env bash
# ruff (lint + format check), mypy and the import contracts (import-linter, pyproject.toml); the
# same script runs in CI via scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=()
for path in service clients tests bench scripts; do
  [ -e "$path" ] && paths+=("$path")
done
ruff check "${paths[@]}"
ruff format --check "${paths[@]}"
mypy service/headscope clients/headscope_client
lint-imports
