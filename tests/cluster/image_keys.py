"""Content keys of the images tests/cluster/images.py builds, and what goes into them.

An image's key hashes its Dockerfile, each file its COPY lines bring in from the
repository (as the build context has it: tracked, or untracked and not ignored by git),
the context's .dockerignore, the build arguments and the base image's key; the base's key
hashes base-rootfs.sh, the mirror, the package list, the CA files and the image's env.
The first 12 hex digits of each are its tag. Standard library only, no buildah needed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dockerfile_reader import parse as parse_dockerfile

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Bump to rebuild: BASE_REVISION when the base is made differently (beyond base-rootfs.sh,
# which is hashed), IMAGE_REVISION when images.py builds or exports images differently
# (buildah flags, archive format). A new base key rebuilds every image from scratch.
BASE_REVISION = "1"
IMAGE_REVISION = "2"

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
    parts = [BASE_REVISION, sha256_file(BASE_SCRIPT), MIRROR, ",".join(BASE_PACKAGES)]
    return digest_of(parts + [f"{ca.name} {sha256_file(ca)}" for ca in ca_files()])


def base_key() -> str:
    """Hash of the base image: its rootfs and its environment."""
    return digest_of([rootfs_key(), *(f"{k}={v}" for k, v in sorted(BASE_ENV.items()))])


def base_ref() -> str:
    return f"localhost/maap-base:bookworm-{base_key()}"


def copy_sources(dockerfile: str) -> list[str]:
    """The repository paths the Dockerfile's COPY/ADD lines bring in (not --from= ones)."""
    stages = parse_dockerfile(dockerfile).stages
    return [copy.source.strip("/") or "." for stage in stages for _, copy in stage.copies()]


def context_files(context: Path, sources: list[str]) -> list[str]:
    """Files under those paths as the build context has them: tracked, or untracked and
    not ignored by git, that exist in the working tree."""
    cmd = ["git", "-C", str(context), "ls-files", "-z", "--cached", "--others"]
    done = subprocess.run(
        [*cmd, "--exclude-standard", "--", *sources], capture_output=True, text=True, check=True
    )
    names = {n for n in done.stdout.split("\0") if n}
    return sorted(n for n in names if (context / n).is_file())


def image_key(dockerfile: Path, context: Path, args: dict[str, str], base: str) -> str:
    """Hash of the Dockerfile, each file its COPY lines bring in (path, exec bit, content),
    the context's .dockerignore, the build arguments and the base image's key."""
    text = dockerfile.read_text()
    parts = [IMAGE_REVISION, dockerfile.relative_to(context).as_posix(), text, f"base={base}"]
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
