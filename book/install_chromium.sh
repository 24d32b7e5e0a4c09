#!/usr/bin/env bash
# Chromium for the website's browser test (tests/test_book.py), from the distribution's packages:
# Playwright's own browser download needs a host this project's machines cannot reach.
# Installs only when Chromium is missing and we are root on a Debian/Ubuntu machine; otherwise it says
# what to do and exits 0 (the browser test then skips, and says why).
set -euo pipefail
CHROMIUM="${WBC_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "Chromium is not at $CHROMIUM: install it (Debian: sudo apt-get install chromium) or set WBC_CHROMIUM;" \
    "until then the website's browser test is skipped" >&2
  exit 0
fi
echo "installing Chromium (apt-get install chromium) for the website's browser test"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q chromium >/dev/null
if [ -x "$CHROMIUM" ]; then "$CHROMIUM" --version 2>/dev/null; else echo "installed, but $CHROMIUM is still missing: set WBC_CHROMIUM" >&2; fi
