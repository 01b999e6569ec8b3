#!/usr/bin/env bash
# Installs every example's pinned packages next to it: a Python venv in
# <example>/.venv (pip install -r requirements.txt) and node_modules from
# package-lock.json (npm ci). The interop tests (tests/it/interop.rs) run
# the examples from there. Safe to run again; .ci/run runs it.
set -euo pipefail
cd "$(dirname "$0")"

for dir in aiogram python-telegram-bot verify; do
    echo "== $dir: python venv"
    [ -x "$dir/.venv/bin/python" ] || python3 -m venv "$dir/.venv"
    "$dir/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$dir/requirements.txt"
done

for dir in grammy verify; do
    echo "== $dir: npm ci"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
done
