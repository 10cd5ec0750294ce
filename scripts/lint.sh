#!/usr/bin/env bash
# ruff (lint + format check) on the code; the same script runs in CI via scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check service clients tests bench
ruff format --check service clients tests bench
