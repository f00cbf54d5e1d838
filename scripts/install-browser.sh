#!/bin/sh
# Install Debian's Chromium and its WebDriver for tests/test_report_browser.py, which opens
# report.html in a real headless browser. Idempotent: does nothing when both are installed.
#
#     sh scripts/install-browser.sh
set -eu

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
$sudo apt-get update
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver
