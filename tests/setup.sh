#!/usr/bin/env bash
# What the test suite needs beyond Python packages: Debian's Chromium, for the attention page's browser tests.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || [ -n "${HF_CHROMIUM:-}" ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  exit 0
fi
echo "tests/setup.sh: install Chromium (Debian/Ubuntu: apt-get install chromium) or set HF_CHROMIUM=/path/to/chrome" >&2
exit 1
