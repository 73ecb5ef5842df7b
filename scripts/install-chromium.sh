#!/usr/bin/env bash
# Make a headless Chromium available for the report's browser test (tests/test_html_report.py), which looks
# for chromium, chromium-browser or google-chrome on PATH. Debian's package first (apt-get, as root or through
# sudo); where apt-get cannot be used, Playwright's Chromium from PyPI into .venv, linked as .venv/bin/chromium
# (put .venv/bin on PATH). Exits non-zero, saying why, when neither works.
set -euo pipefail
cd "$(dirname "$0")/.."
found() { command -v chromium || command -v chromium-browser || command -v google-chrome || true; }
if [ -n "$(found)" ]; then echo "chromium: $(found)"; exit 0; fi

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    export DEBIAN_FRONTEND=noninteractive
    if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
        echo "chromium: $(found) (Debian package)"; exit 0
    fi
    echo "apt-get could not install chromium; trying Playwright's build" >&2
fi

[ -x .venv/bin/python ] || { echo "no .venv: run bash scripts/setup.sh first" >&2; exit 1; }
.venv/bin/python -m pip --disable-pip-version-check -q install "playwright>=1.40"
.venv/bin/python -m playwright install chromium >/dev/null
# the browser Playwright just installed: its executable path, from Playwright itself
exe=$(.venv/bin/python -c "from playwright.sync_api import sync_playwright
with sync_playwright() as p: print(p.chromium.executable_path)")
[ -x "$exe" ] || { echo "Playwright installed no Chromium executable ($exe)" >&2; exit 1; }
if ! "$exe" --headless --no-sandbox --disable-gpu --dump-dom about:blank >/dev/null 2>&1; then
    echo "Playwright's Chromium does not start (missing system libraries? as root: playwright install-deps chromium)" >&2
    exit 1
fi
ln -sf "$exe" .venv/bin/chromium
echo "chromium: .venv/bin/chromium -> $exe (Playwright; add .venv/bin to PATH)"
