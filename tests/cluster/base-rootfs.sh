#!/usr/bin/env bash
# Builds the local stand-in for python:3.11-slim-bookworm (no registry is reachable here):
# a Debian bookworm minbase root filesystem with Debian's python3 (3.11), venv, `python`,
# and the CA certificates of this machine (its egress proxy intercepts TLS), as a tarball.
# images.py calls it and keys the tarball by a hash of this file, the package list and the
# CA files; it imports the tarball into buildah's storage as localhost/maap-base:bookworm-KEY.
#
#   bash tests/cluster/base-rootfs.sh OUT.tar MIRROR PACKAGES CA_FILE...
#
# Needs root, debootstrap and tar. Writes OUT.tar only when everything succeeded.
set -euo pipefail

out="$1" mirror="$2" packages="$3"
shift 3

work="$(mktemp -d "${out}.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror"

# apt sources as in the official bookworm images (updates and security too), for builds
# that apt-get install (the trainer's build stage installs g++).
security="${mirror%/debian}/debian-security"
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF

# This machine's CAs, next to Debian's, in the system bundle that pip, requests and apt use.
mkdir -p "$root/usr/local/share/ca-certificates"
for ca in "$@"; do
  cp "$ca" "$root/usr/local/share/ca-certificates/$(basename "${ca%.crt}").crt"
done
chroot "$root" update-ca-certificates >/dev/null

# As small as the slim image: no package lists, caches, logs or docs.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/tmp/* "$root"/var/tmp/*
find "$root" -name __pycache__ -type d -prune -exec rm -rf {} +
# Mount points and files debootstrap leaves that a container runtime provides.
rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
: >"$root/etc/resolv.conf"

tar --numeric-owner --xattrs --sort=name -C "$root" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$out"
