#!/usr/bin/env bash
# Debian's Chromium (headless) for tests/test_web_demo.py, driven by Playwright's Python package
# with executable_path=/usr/bin/chromium: no browser download (`playwright install` is never run).
# Idempotent: does nothing when /usr/bin/chromium is already there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "chromium.sh: need root or sudo to apt-get install chromium" >&2; exit 1; }
  SUDO="sudo"
fi
echo "installing chromium (Debian package) ..."
$SUDO apt-get update -qq
# fonts-dejavu-core: readable text in the committed screenshot (docs/web-demo.png)
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
