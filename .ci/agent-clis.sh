#!/usr/bin/env bash
# The agent CLIs the adapter tests drive, at pinned versions, in a project-local folder
# (.agents/node_modules/.bin), never globally. Needs node and npm (Debian: nodejs, npm).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/aider.sh  # Aider is a Python program: a virtualenv of its own, .agents/aider
PINS=(@anthropic-ai/claude-code@2.1.332 @openai/codex@0.171.0 @google/gemini-cli@0.61.0)
stamp=".agents/.pins"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${PINS[*]}" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "installing nodejs and npm (to install the agent CLIs)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
mkdir -p .agents
npm install --no-audit --no-fund --loglevel=error --prefix .agents "${PINS[@]}"
echo "${PINS[*]}" > "$stamp"
