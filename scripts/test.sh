#!/usr/bin/env bash
# One command for the whole test suite on a fresh machine: environment, browser, tests.
#   bash scripts/test.sh            # everything, slow end-to-end tests included
#   bash scripts/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck disable=SC1091
source scripts/setup_env.sh "app,train,dev"

# The web-UI browser test drives Debian's Chromium through Playwright (no browser download).
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "[test] installing chromium (Debian package)"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[test] /usr/bin/chromium missing and no root: the browser test will be skipped"
  fi
fi

export HF_HUB_OFFLINE=1
ruff check .
python -m pytest -q "$@"
