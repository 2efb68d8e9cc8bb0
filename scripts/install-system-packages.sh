#!/usr/bin/env bash
# The Debian packages the tests need beyond Python: what builds the images without a
# Docker engine (buildah, debootstrap) and what the real kubelet node runs on (runc,
# CNI plugins, iptables, conntrack; busybox-static for its smallest test image), and the
# headless browser the console's end-to-end tests drive (chromium; fonts-liberation so
# its pages render text).
# `make install` runs this. It installs only what is missing, with apt-get, as root.
# Not root, or no apt-get: it names what is missing and stops there (with CI=true, an
# error: the real-node tests would fail without them).
set -euo pipefail

PACKAGES=(
  buildah
  debootstrap
  runc
  containernetworking-plugins
  iptables
  conntrack
  busybox-static
  openssl
  chromium
  fonts-liberation
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$pkg")
done
if (( ${#missing[@]} == 0 )); then
  echo "system packages: all present (${PACKAGES[*]})"
  exit 0
fi

if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
  msg="system packages missing: ${missing[*]} (install them with apt-get as root)"
  if [[ "${CI:-}" == "true" ]]; then
    echo "$msg; CI=true, failing." >&2
    exit 1
  fi
  echo "$msg; the image and real-node tests will skip." >&2
  exit 0
fi

echo "system packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
