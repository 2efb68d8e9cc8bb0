#!/usr/bin/env bash
# Runs a command in an image from buildah's storage with plain runc, the way a restricted
# Pod would: as the image's user (uid 1000), read-only root filesystem, a tmpfs on /tmp,
# no capabilities, no new privileges, no network (loopback only).
#
#   bash tests/cluster/run-image.sh localhost/maap-operator:KEY crd
#   bash tests/cluster/run-image.sh localhost/maap-trainer:KEY python -m maap_trainer --help
#
# Arguments after the image replace its CMD (the ENTRYPOINT stays, as with `docker run`);
# MAAP_RUN_ENTRYPOINT=... replaces the entrypoint too. Needs root, buildah and runc.
set -euo pipefail

image="$1"
shift
id="maap-check-$$"
bundle="$(mktemp -d)"
ctr="$(buildah from --pull=false "$image")"
cleanup() {
  runc delete --force "$id" >/dev/null 2>&1 || true
  buildah umount "$ctr" >/dev/null 2>&1 || true
  buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$bundle"
}
trap cleanup EXIT
root="$(buildah mount "$ctr")"
buildah inspect --type image "$image" >"$bundle/image.json"
(cd "$bundle" && runc spec)

python3 - "$bundle" "$root" "$@" <<'EOF'
import json, os, sys

bundle, root, args = sys.argv[1], sys.argv[2], sys.argv[3:]
image = json.load(open(f"{bundle}/image.json"))["OCIv1"]["config"]
spec = json.load(open(f"{bundle}/config.json"))
entry = os.environ["MAAP_RUN_ENTRYPOINT"].split() if "MAAP_RUN_ENTRYPOINT" in os.environ \
    else image.get("Entrypoint") or []
user = image.get("User") or "0:0"
uid, _, gid = user.partition(":")
proc = spec["process"]
proc.update(
    terminal=False,
    args=entry + (args or image.get("Cmd") or []),
    env=image.get("Env") or [],
    cwd=image.get("WorkingDir") or "/",
    user={"uid": int(uid), "gid": int(gid or uid)},
    noNewPrivileges=True,
    capabilities={k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
)
spec["root"] = {"path": root, "readonly": True}
spec["hostname"] = "maap-check"
spec["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=1777", "size=256m"]})
json.dump(spec, open(f"{bundle}/config.json", "w"), indent=1)
EOF

runc run --bundle "$bundle" "$id" </dev/null
