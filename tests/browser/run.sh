#!/usr/bin/env bash
# Runs the dashboard's browser test (dashboard.mjs) in Debian's headless Chromium, driven by
# playwright-core from npm; installs both when missing (chromium with apt, as root or through
# sudo). Needs GAPMETER_URL and GAPMETER_KEY (a team key); screenshots go to $SCREENSHOTS.
# tests/api/dashboard.rs starts a service and calls this.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${GAPMETER_URL:?}" "${GAPMETER_KEY:?}"
chromium="${CHROMIUM:-/usr/bin/chromium}"
lock="${GAPMETER_CACHE:-$HOME/.cache/gapmeter}/.setup-browser.lock"
mkdir -p "$(dirname "$lock")"
exec 9>"$lock"
flock 9
if [[ ! -x "$chromium" ]]; then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "installing Debian's chromium (one time)" >&2
  $sudo apt-get install -y --no-install-recommends chromium >&2 ||
    { $sudo apt-get update >&2 && $sudo apt-get install -y --no-install-recommends chromium >&2; }
fi
stamp="$here/node_modules/.installed-$(sha256sum "$here/package-lock.json" | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  (cd "$here" && npm ci --no-audit --no-fund --silent >&2)
  touch "$stamp"
fi
flock -u 9
CHROMIUM="$chromium" exec node "$here/dashboard.mjs"
