"""Builds the repository's real images from their Dockerfiles with buildah (no Docker engine).

No registry is reachable here, so the Dockerfiles' base (python:3.11-slim-bookworm) is
replaced by a local one: Debian bookworm minbase from deb.debian.org with Debian's python3
(3.11), built by base-rootfs.sh and imported into buildah's storage as
localhost/maap-base:bookworm-KEY. The Dockerfiles take it as `--build-arg PYTHON_IMAGE`,
so the same files still build FROM python:3.11-slim elsewhere.

Every image is tagged and cached by content: its key hashes the Dockerfile, each file its
COPY lines bring in from the repository, the build arguments and the base image's key.
The result is an OCI archive, ~/.cache/maap/images/NAME-KEY.tar, whose image is named
docker.io/library/maap-NAME:KEY, the name containerd's CRI resolves a Pod's
`image: maap-NAME:KEY` to. The tag is never `latest`, so the default imagePullPolicy is
IfNotPresent and kubelet uses the imported image without trying to pull.

    python tests/cluster/images.py build trainer|operator|all [--print-ref]
    python tests/cluster/images.py key trainer
    python tests/cluster/images.py import ARCHIVE --ctr CTR --address SOCKET
"""

from __future__ import annotations

import argparse
import hashlib
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("MAAP_CACHE_DIR") or Path.home() / ".cache" / "maap") / "images"
# Bump when this file changes how an image is built or exported (flags, archive format).
KEY_REVISION = "1"

MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "python-is-python3",
    "ca-certificates",
    "netbase",
    "tzdata",
)
BASE_SCRIPT = HERE / "base-rootfs.sh"
CA_DIR = Path("/usr/local/share/ca-certificates")
# As in the python:3.11-slim image, plus the system CA bundle (which holds this machine's
# CAs) for pip and for requests/httpx-based code, which would otherwise use certifi's.
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "PIP_CERT": BUNDLE,
    "REQUESTS_CA_BUNDLE": BUNDLE,
    "SSL_CERT_FILE": BUNDLE,
}


@dataclass(frozen=True)
class Image:
    dockerfile: str
    args: dict[str, str]


IMAGES = {
    # TORCH_INDEX_URL: the Dockerfile's default is PyTorch's CPU-only index
    # (download.pytorch.org), which is unreachable here; PyPI serves the CUDA build of the
    # same torch version, so the image built here carries the nvidia-* CUDA libraries
    # (gigabytes a CPU node never uses). Elsewhere, build with the default.
    "trainer": Image("trainer-image/Dockerfile", {"TORCH_INDEX_URL": "https://pypi.org/simple"}),
    "operator": Image("operator/Dockerfile", {}),
}


class ImageError(Exception):
    """A missing tool or a failed step, with one readable message."""


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def since(start: float) -> str:
    return f"{time.monotonic() - start:.1f} s"


def mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.0f} MB"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_of(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def ca_files() -> list[Path]:
    return sorted(CA_DIR.glob("*.crt")) if CA_DIR.is_dir() else []


def rootfs_key() -> str:
    """Hash of what goes into the base's rootfs: the script, mirror, packages and CAs."""
    parts = [KEY_REVISION, sha256_file(BASE_SCRIPT), MIRROR, ",".join(BASE_PACKAGES)]
    return digest_of(parts + [f"{ca.name} {sha256_file(ca)}" for ca in ca_files()])


def base_key() -> str:
    """Hash of the base image: its rootfs and its environment."""
    return digest_of([rootfs_key(), *(f"{k}={v}" for k, v in sorted(BASE_ENV.items()))])


def base_ref() -> str:
    return f"localhost/maap-base:bookworm-{base_key()}"


def copy_sources(dockerfile: str) -> list[str]:
    """The repository paths the Dockerfile's COPY/ADD lines bring in (not --from= ones)."""
    text = re.sub(r"\\\n", " ", dockerfile)
    sources: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]):
            continue
        if args and args[0].startswith("["):
            args = json.loads(" ".join(args))
        sources += [a.strip("/") or "." for a in args[:-1]]
    return sources


def context_files(context: Path, sources: list[str]) -> list[str]:
    """Files under those paths as the build context has them: tracked, or untracked and
    not ignored by git, that exist in the working tree."""
    done = subprocess.run(
        [
            "git",
            "-C",
            str(context),
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            *sources,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {n for n in done.stdout.split("\0") if n}
    return sorted(n for n in names if (context / n).is_file())


def image_key(dockerfile: Path, context: Path, args: dict[str, str], base: str) -> str:
    """Hash of the Dockerfile, each file its COPY lines bring in (path, exec bit, content),
    the context's .dockerignore, the build arguments and the base image's key."""
    text = dockerfile.read_text()
    parts = [KEY_REVISION, dockerfile.relative_to(context).as_posix(), text, f"base={base}"]
    parts += [f"{k}={v}" for k, v in sorted(args.items())]
    ignore = context / ".dockerignore"
    parts.append(ignore.read_text() if ignore.is_file() else "")
    for name in context_files(context, copy_sources(text)):
        path = context / name
        parts.append(f"{name} {os.access(path, os.X_OK):d} {sha256_file(path)}")
    return digest_of(parts)


def key(name: str) -> str:
    image = IMAGES[name]
    return image_key(REPO / image.dockerfile, REPO, image.args, base_key())


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
    # runc (crun fails on this cgroup v1 hybrid host); host network (no CNI for builds);
    # open files within this machine's hard limit (20000 here), which runc cannot raise.
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    flags = ["--layers", "--pull=false", "--network=host", "--isolation=oci", "--runtime=runc"]
    cmd = ["buildah", "bud", *flags, f"--ulimit=nofile={nofile}:{nofile}", "-f", image.dockerfile]
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
    # The archive: `buildah commit` of a container of that image (which adds one empty
    # layer) writes the layers uncompressed; `buildah push` gzips them whatever its flags
    # say (several times slower to write, and to import: see the README).
    step_start = time.monotonic()
    partial = built.archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    ctr = buildah("from", "--pull=false", built.local).strip()
    try:
        buildah("commit", "--quiet", ctr, f"oci-archive:{partial}:{built.full_ref}")
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
    if key(name) != built.key:
        partial.unlink()
        raise ImageError(f"{name}: its inputs changed during the build: run it again")
    partial.rename(built.archive)
    log(f"{name}: archive {built.archive} ({mb(built.archive)}) in {since(step_start)}")
    for old in CACHE.glob(f"{name}-*.tar"):
        if old != built.archive and re.fullmatch(rf"{name}-[0-9a-f]{{12}}\.tar", old.name):
            old.unlink()
            log(f"{name}: removed the older archive {old.name}")
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
    """Imports the archive with containerd's `ctr`, unpacked for the default snapshotter,
    under the normalised name a Pod's image resolves to; returns that name."""
    ref = archive_ref(Path(archive))
    base = ["--address", str(address), "--namespace", namespace]
    start = time.monotonic()
    done = subprocess.run(
        [str(ctr_binary), *base, "images", "import", "--platform", "linux/amd64", str(archive)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise ImageError(
            f"ctr images import {archive} failed: {(done.stderr or done.stdout).strip()}"
        )
    listed = subprocess.run(
        [str(ctr_binary), *base, "images", "ls", "-q"], capture_output=True, text=True, check=True
    )
    if ref not in listed.stdout.split():
        raise ImageError(
            f"ctr imported {archive} but lists no {ref}:\n{done.stdout}{listed.stdout}"
        )
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
