#!/usr/bin/env bash
# Open a published leaderboard HTML page in headless Chromium and save a screenshot.
# Usage: benchmarks/leaderboard_screenshot.sh [leaderboard/phantom.html] [out.png]
# Installs Debian's chromium when it is missing (root, Debian/Ubuntu).
set -euo pipefail
page="${1:-leaderboard/phantom.html}"
shot="${2:-leaderboard-screenshot.png}"
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
profile="$(mktemp -d)"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1400,2400 \
  --screenshot="$shot" "file://$(realpath "$page")" 2>/dev/null
rm -rf "$profile"
echo "screenshot: $shot"
