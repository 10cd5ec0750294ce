#!/usr/bin/env bash
# Install everything the tests need into .venv, then run lint and the test suite.
# Tests read the model stand-in, tokenizer, tagger and corpus from ../shared (HEADSCOPE_SHARED).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "server,test"
# shellcheck disable=SC1091
. .venv/bin/activate
shared="${HEADSCOPE_SHARED:-$(cd .. && pwd)/shared}"
export HEADSCOPE_SHARED="$shared"
export NLTK_DATA="${NLTK_DATA:-$shared/assets/nltk_data}"
export HF_HUB_OFFLINE=1 HEADSCOPE_OFFLINE=1
bash scripts/lint.sh
python -m pytest -q -p no:cacheprovider "$@"
