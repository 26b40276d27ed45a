#!/usr/bin/env bash
# Headless Chromium for the HTML report's rendering test (tests/test_report_html.py), from
# the distribution's packages (Debian: chromium). The test is skipped without it locally
# and fails without it under CI.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    exit 0
fi
echo "installing chromium (headless browser for the HTML report test)"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core
