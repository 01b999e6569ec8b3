#!/usr/bin/env bash
# Installs the frameworks tests/it/gateway_frameworks.rs runs through the
# gateway, pinned: aiogram and python-telegram-bot (PyPI) into .venv, grammY
# (npm registry) into node_modules, both here. Skips what is already
# installed from the same pins; .ci/run runs it and exports
#   FRAMEWORKS_PYTHON=<here>/.venv/bin/python
#   FRAMEWORKS_NODE_MODULES=<here>/node_modules
set -euo pipefail
cd "$(dirname "$0")"

stamp() { sha256sum "$1" | cut -d' ' -f1; }

if [ "$(cat .venv/.installed 2>/dev/null)" != "$(stamp requirements.txt)" ]; then
    echo "== tests/it/frameworks: python venv (aiogram, python-telegram-bot)"
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
    stamp requirements.txt > .venv/.installed
fi

if [ "$(cat node_modules/.installed 2>/dev/null)" != "$(stamp package-lock.json)" ]; then
    echo "== tests/it/frameworks: npm ci (grammy)"
    npm ci --no-audit --no-fund --loglevel=error
    stamp package-lock.json > node_modules/.installed
fi
