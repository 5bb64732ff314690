#!/usr/bin/env bash
# Install what the OHIF viewer test (tests/viewer) needs, only where it is missing:
#   - Debian's chromium (apt) at /usr/bin/chromium, and node/npm (apt) if there is no node;
#   - OHIF Viewer's prebuilt static files (npm pack @ohif/app@$OHIF_VERSION, checked against the
#     registry's integrity hash), untarred to $CACHE/ohif-$OHIF_VERSION/dist;
#   - playwright-core, pinned by tests/viewer/package-lock.json, with `npm ci` into $CACHE/node.
# $CACHE is ${THYROID_NODE_CACHE:-~/.cache/thyroid-node}/viewer, outside git. No browser is ever
# downloaded (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1, --ignore-scripts): the test drives /usr/bin/chromium.
set -euo pipefail

OHIF_VERSION=3.13.2
OHIF_INTEGRITY="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="${THYROID_NODE_CACHE:-$HOME/.cache/thyroid-node}/viewer"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${need[@]}" >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 18 ]; then
  echo "node $(node --version) is too old for playwright-core (needs >= 18)" >&2
  exit 1
fi

mkdir -p "$CACHE"

ohif="$CACHE/ohif-$OHIF_VERSION"
if [ ! -f "$ohif/dist/index.html" ]; then
  echo "fetching OHIF Viewer $OHIF_VERSION (npm pack @ohif/app) into $ohif"
  tmp=$(mktemp -d "$CACHE/.ohif.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
  tarball="$tmp/ohif-app-$OHIF_VERSION.tgz"
  got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
  if [ "$got" != "$OHIF_INTEGRITY" ]; then
    echo "OHIF tarball integrity mismatch: $got" >&2
    exit 1
  fi
  tar xzf "$tarball" -C "$tmp"
  rm -rf "$ohif"
  mv "$tmp/package" "$ohif"
  rm -rf "$tmp"
  trap - EXIT
fi

modules="$CACHE/node"
if ! cmp -s "$ROOT/tests/viewer/package-lock.json" "$modules/package-lock.json" \
   || [ ! -f "$modules/node_modules/playwright-core/package.json" ]; then
  echo "installing playwright-core (npm ci, pinned by tests/viewer/package-lock.json) into $modules"
  rm -rf "$modules"
  mkdir -p "$modules"
  cp "$ROOT/tests/viewer/package.json" "$ROOT/tests/viewer/package-lock.json" "$modules/"
  (cd "$modules" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
fi

echo "viewer ready: $(/usr/bin/chromium --version 2>/dev/null | head -n1), OHIF $OHIF_VERSION, playwright-core $(node -p "require('$modules/node_modules/playwright-core/package.json').version"), node $(node --version)"
