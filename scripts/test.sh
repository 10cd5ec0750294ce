#!/usr/bin/env bash
# Install everything the tests need into .venv, then run lint and the test suite.
# Tests read the model stand-in, tokenizer, tagger and corpus from ../shared (HEADSCOPE_SHARED).
set -euo pipefail
cd "$(dirname "$0")/.."
# `ray`: the Ray tests (tests/jobs) start a local Ray on 127.0.0.1; without the extra they skip,
# and under CI=true they fail.
bash scripts/setup.sh "server,test,ray"
# The viewer's browser tests (tests/viewer) drive Debian's chromium; Playwright never downloads
# a browser of its own. Installed once, only where no chromium is found (CI runs as root).
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ -z "${HEADSCOPE_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 \
  && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing Debian's chromium for the viewer tests" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "test: no chromium and no root apt-get; the viewer tests skip (and fail with CI=true)" >&2
  fi
fi
# shellcheck disable=SC1091
. .venv/bin/activate
shared="${HEADSCOPE_SHARED:-$(cd .. && pwd)/shared}"
export HEADSCOPE_SHARED="$shared"
export NLTK_DATA="${NLTK_DATA:-$shared/assets/nltk_data}"
export HF_HUB_OFFLINE=1 HEADSCOPE_OFFLINE=1
bash scripts/lint.sh
python -m pytest -q -p no:cacheprovider "$@"
