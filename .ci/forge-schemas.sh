#!/usr/bin/env bash
# GitHub's official OpenAPI description (@octokit/openapi, pinned) for the forge stand-ins'
# schema checks (tests/stubs/forge/schema.py), in a project-local folder
# (.agents/openapi/node_modules), never globally. Needs node and npm (Debian: nodejs, npm).
# Keep the pin equal to OCTOKIT_OPENAPI_VERSION in tests/stubs/forge/schema.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PIN="@octokit/openapi@23.0.2"
prefix=".agents/openapi"
stamp="$prefix/.pin"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PIN" ] \
    && [ -f "$prefix/node_modules/@octokit/openapi/generated/ghes-3.19.json" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "installing nodejs and npm (to install $PIN)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
mkdir -p "$prefix"
npm install --no-audit --no-fund --loglevel=error --prefix "$prefix" "$PIN"
echo "$PIN" > "$stamp"
