#!/usr/bin/env bash
# Aider (PyPI `aider-chat`, pinned) in a virtualenv of its own, .agents/aider, never in
# ado-ray's: its dependencies (LiteLLM, tree-sitter, numpy, ...) stay out of our
# environment. The adapter tests run .agents/aider/bin/aider. Idempotent: a stamp holds
# the pin, and a changed pin rebuilds the virtualenv; pip's wheel cache makes a rebuild
# (a fresh clone in CI) quick. AIDER_PYTHON: the interpreter (default: the first of
# python3.12, 3.11, 3.10 on PATH; aider-chat 0.86.2 wants 3.10 to 3.12), with venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PIN="aider-chat==0.86.2"
VENV=.agents/aider
stamp="$VENV/.pin"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PIN" ] && [ -x "$VENV/bin/aider" ]; then
    exit 0
fi
python="${AIDER_PYTHON:-}"
if [ -z "$python" ]; then
    for candidate in python3.12 python3.11 python3.10; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import venv' 2>/dev/null; then
            python="$candidate"
            break
        fi
    done
fi
if [ -z "$python" ]; then
    echo "no Python 3.10-3.12 with venv on PATH for Aider ($PIN); set AIDER_PYTHON" >&2
    exit 1
fi
echo "installing $PIN into $VENV (with $("$python" --version))"
rm -rf "$VENV"
mkdir -p .agents
"$python" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$PIN"
"$VENV/bin/aider" --version >/dev/null
echo "$PIN" > "$stamp"
