#!/usr/bin/env bash
# Nightly-style fuzzing: the CI fuzz test (tests/system/test_fuzz.py) with many more generated
# cases per operation and a fresh random seed each run.
#   bash scripts/fuzz.sh [EXAMPLES]          (default 2000 per operation)
# Add schemathesis' negative-data check (bad input must be refused with a 4xx) with
#   HEADSCOPE_FUZZ_CHECKS=+negative_data_rejection bash scripts/fuzz.sh
# It reports lax type coercion in request bodies (JSON `true` taken as the integer 1), and also
# query-string values it cannot type (`?texts=false` is a valid string): read its findings.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate
shared="${HEADSCOPE_SHARED:-$(cd .. && pwd)/shared}"
export HEADSCOPE_SHARED="$shared"
export NLTK_DATA="${NLTK_DATA:-$shared/assets/nltk_data}"
export HF_HUB_OFFLINE=1 HEADSCOPE_OFFLINE=1
export HEADSCOPE_FUZZ_EXAMPLES="${1:-2000}"
export HEADSCOPE_FUZZ_DETERMINISTIC=0
exec python -m pytest -q -p no:cacheprovider tests/system/test_fuzz.py
