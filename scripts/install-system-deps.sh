#!/usr/bin/env bash
# Debian packages the test suite needs: Chromium for the demo-page test.
# Installs them when missing and we are root; otherwise says what is missing
# (the browser test then skips, naming the package).
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "note: install ${missing[*]} (apt-get install ${missing[*]}) to run the browser tests" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
