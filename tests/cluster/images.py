"""Builds the repository's real images from their Dockerfiles with buildah (no Docker engine).

No registry is reachable here, so the Dockerfiles' base (python:3.11-slim-bookworm) is
replaced by a local one: Debian bookworm minbase from deb.debian.org with Debian's python3
(3.11), built by base-rootfs.sh and imported into buildah's storage as
localhost/maap-base:bookworm-KEY. The Dockerfiles take it as `--build-arg PYTHON_IMAGE`,
so the same files still build FROM python:3.11-slim elsewhere.

Every image is tagged and cached by content (image_keys.py: the key hashes the
Dockerfile, each file its COPY lines bring in, the build arguments and the base image's
key). The result is an OCI archive, ~/.cache/maap/images/NAME-KEY.tar, whose image is
named docker.io/library/maap-NAME:KEY, the name containerd's CRI resolves a Pod's
`image: maap-NAME:KEY` to. The tag is never `latest`, so the default imagePullPolicy is
IfNotPresent and kubelet uses the imported image without trying to pull.

    python tests/cluster/images.py build trainer|operator|all [--print-ref]
    python tests/cluster/images.py key trainer
    python tests/cluster/images.py import ARCHIVE --ctr CTR --address SOCKET
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from image_keys import (
    BASE_ENV,
    BASE_PACKAGES,
    BASE_SCRIPT,
    IMAGES,
    MIRROR,
    REPO,
    base_key,
    base_ref,
    ca_files,
    key,
    rootfs_key,
)

CACHE = Path(os.environ.get("MAAP_CACHE_DIR") or Path.home() / ".cache" / "maap") / "images"

# Layer cache on (a rebuild reruns only the steps after what changed), intermediate
# containers removed even when a step fails, the local base never pulled, the host's
# network (no CNI needed), runc (crun fails on this cgroup v1 hybrid host).
BUD_FLAGS = (
    "--layers",
    "--force-rm",
    "--pull=false",
    "--network=host",
    "--isolation=oci",
    "--runtime=runc",
)


class ImageError(Exception):
    """A missing tool or a failed step, with one readable message."""


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def since(start: float) -> str:
    return f"{time.monotonic() - start:.1f} s"


def mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.0f} MB"


def archive_path(name: str, image_key_: str) -> Path:
    return CACHE / f"{name}-{image_key_}.tar"


def need(tool: str, package: str) -> None:
    if not shutil.which(tool):
        raise ImageError(
            f"{tool} not found: install the Debian package {package} (apt-get install {package})"
        )


def run_logged(cmd: list[str], logfile: Path, on_line: Callable[[str], None] | None = None) -> None:
    """Runs cmd with its output in logfile; on failure, raises with the log's last 60 lines."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=60)
    with logfile.open("w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        assert proc.stdout
        for line in proc.stdout:
            out.write(line)
            tail.append(line)
            if on_line:
                on_line(line)
        rc = proc.wait()
    if rc:
        raise ImageError(f"{cmd[0]} {cmd[1]} failed (exit {rc}):\n{''.join(tail)}log: {logfile}")


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=True).stdout


def buildah_has(ref: str) -> bool:
    done = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True)
    return done.returncode == 0


def check_tools(base_needed: bool) -> None:
    if os.geteuid() != 0:
        raise ImageError("building images needs root here (buildah's overlay storage, debootstrap)")
    need("buildah", "buildah")
    need("runc", "runc")
    if base_needed:
        need("debootstrap", "debootstrap")


def ensure_base() -> str:
    """The local base image in buildah's storage, from the cached rootfs tarball or built."""
    ref = base_ref()
    if buildah_has(ref):
        log(f"base: {ref} (present)")
        return ref
    tarball = CACHE / f"base-bookworm-{rootfs_key()}.tar"
    check_tools(base_needed=not tarball.exists())
    start = time.monotonic()
    if not tarball.exists():
        log(f"base: debootstrap bookworm from {MIRROR} ...")
        cmd = ["bash", str(BASE_SCRIPT), str(tarball), MIRROR, ",".join(BASE_PACKAGES)]
        run_logged([*cmd, *map(str, ca_files())], CACHE / "logs" / f"{tarball.stem}.log")
        log(f"base: rootfs {tarball} ({mb(tarball)}) in {since(start)}")
        start = time.monotonic()
    ctr = buildah("from", "scratch").strip()
    try:
        buildah("add", "--quiet", ctr, str(tarball), "/")
        env = [a for k, v in BASE_ENV.items() for a in ("--env", f"{k}={v}")]
        buildah("config", *env, "--cmd", "python3", ctr)
        buildah("commit", "--quiet", ctr, ref)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
    log(f"base: imported {ref} in {since(start)}")
    return ref


@dataclass(frozen=True)
class Built:
    name: str
    key: str
    archive: Path

    @property
    def ref(self) -> str:
        """What a Pod's `image:` says."""
        return f"maap-{self.name}:{self.key}"

    @property
    def full_ref(self) -> str:
        """The same, normalised as containerd's CRI stores it (and as the archive names it)."""
        return f"docker.io/library/{self.ref}"

    @property
    def local(self) -> str:
        """The image in buildah's storage."""
        return f"localhost/{self.ref}"


def bud_command(name: str, base: str) -> list[str]:
    image = IMAGES[name]
    # Open files within this machine's hard limit (20000 here), which runc cannot raise.
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    cmd = [
        "buildah",
        "bud",
        *BUD_FLAGS,
        f"--ulimit=nofile={nofile}:{nofile}",
        "-f",
        image.dockerfile,
    ]
    args = {"PYTHON_IMAGE": base, **image.args}
    return cmd + [a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")]


def build(name: str) -> Built:
    """Builds (or reuses) the image NAME ("trainer", "operator") and its OCI archive."""
    if name not in IMAGES:
        raise ImageError(f"unknown image {name!r}: one of {', '.join(IMAGES)}")
    start = time.monotonic()
    built = Built(name, key(name), archive_path(name, key(name)))
    if built.archive.exists():
        log(f"{name}: {built.archive} (cached, {since(start)})")
        return built
    check_tools(base_needed=False)
    cmd = bud_command(name, ensure_base())
    logs = CACHE / "logs" / f"{name}-{built.key}"
    step_start = time.monotonic()

    def on_line(line: str) -> None:
        if "STEP " in line[:16]:
            log(f"{name}: [{time.monotonic() - step_start:7.1f} s] {line.rstrip()[:110]}")

    if not buildah_has(built.local):
        log(f"{name}: buildah bud {IMAGES[name].dockerfile} (log: {logs}.log)")
        run_logged([*cmd, "-t", built.local, str(REPO)], logs.with_suffix(".log"), on_line)
        log(f"{name}: built {built.local} in {since(step_start)}")
    # The archive: zstd layers. Measured here on the trainer (README): 111 s to write and
    # 53 s to import, against 65 s and 77 s uncompressed (containerd writes and reads
    # twice the bytes) at twice the size; gzip is slower at both.
    step_start = time.monotonic()
    partial = built.archive.with_suffix(f".{os.getpid()}.partial")  # a concurrent build: its own
    partial.unlink(missing_ok=True)
    dest = f"oci-archive:{partial}:{built.full_ref}"
    push = ["buildah", "push", "--quiet", "--compression-format", "zstd", built.local, dest]
    run_logged(push, logs.with_suffix(".push.log"))
    if key(name) != built.key:
        partial.unlink()
        raise ImageError(f"{name}: its inputs changed during the build: run it again")
    partial.rename(built.archive)
    log(f"{name}: archive {built.archive} ({mb(built.archive)}) in {since(step_start)}")
    # Older builds of this image (gigabytes each): their archives and tags go; the layer
    # cache stays for the next build (`buildah rmi --prune` clears it).
    for old in CACHE.glob(f"{name}-*.tar"):
        if old != built.archive and re.fullmatch(rf"{name}-[0-9a-f]{{12}}\.tar", old.name):
            old.unlink()
            log(f"{name}: removed the older archive {old.name}")
    for line in buildah("images", "--format", "{{.Name}}:{{.Tag}}").split():
        if line.startswith(f"localhost/maap-{name}:") and line != built.local:
            subprocess.run(["buildah", "rmi", line], capture_output=True)
            log(f"{name}: removed the older image {line}")
    log(f"{name}: {built.full_ref} done in {since(start)}")
    return built


def archive_ref(archive: Path) -> str:
    """The image name an OCI archive's index.json gives (org.opencontainers.image.ref.name)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member
        index = json.load(member)
    return index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]


def import_into_containerd(
    archive: Path, ctr_binary: str | Path, address: str | Path, namespace: str = "k8s.io"
) -> str:
    """Imports the archive with containerd's `ctr` (unpacked for the default snapshotter,
    then its layer blobs left to the garbage collector: half the disk for the trainer)
    under the name the archive gives, which is the normalised name the CRI resolves a
    Pod's `image: maap-NAME:KEY` to; returns that name."""
    ref = archive_ref(Path(archive))
    ctr = [str(ctr_binary), "--address", str(address), "--namespace", namespace, "images"]
    start = time.monotonic()
    done = subprocess.run(
        [*ctr, "import", "--local", "--discard-unpacked-layers", str(archive)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise ImageError(f"ctr images import {archive}: {(done.stderr or done.stdout).strip()}")
    listed = subprocess.run([*ctr, "ls", "-q"], capture_output=True, text=True, check=True)
    if ref not in listed.stdout.split():
        raise ImageError(f"ctr imported {archive} but lists no {ref}:\n{listed.stdout}")
    log(f"imported {ref} into containerd ({namespace}) in {since(start)}")
    return ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build (or reuse) images and their OCI archives")
    p_build.add_argument("name", choices=[*IMAGES, "all"])
    p_build.add_argument("--print-ref", action="store_true", help="print only the image refs")
    p_key = sub.add_parser("key", help="print an image's content key without building")
    p_key.add_argument("name", choices=[*IMAGES, "base"])
    p_import = sub.add_parser("import", help="import an archive into containerd")
    p_import.add_argument("archive", type=Path)
    p_import.add_argument("--ctr", required=True)
    p_import.add_argument("--address", required=True)
    p_import.add_argument("--namespace", default="k8s.io")
    args = parser.parse_args(argv)
    try:
        if args.command == "key":
            print(base_key() if args.name == "base" else key(args.name))
        elif args.command == "import":
            print(import_into_containerd(args.archive, args.ctr, args.address, args.namespace))
        else:
            for name in IMAGES if args.name == "all" else [args.name]:
                built = build(name)
                print(built.ref if args.print_ref else f"{name}\t{built.archive}\t{built.ref}")
    except ImageError as err:
        print(f"images.py: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
