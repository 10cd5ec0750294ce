#!/usr/bin/env bash
# ruff (lint + format check) on the code; the same script runs in CI via scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
paths=()
for path in service clients tests bench; do
  [ -e "$path" ] && paths+=("$path")
done
ruff check "${paths[@]}"
ruff format --check "${paths[@]}"
