"""llama.cpp as the benchmark's reference server: built, converted and quantized here.

    python bench/llama_cpp.py build                    # llama-server, llama-quantize
    python bench/llama_cpp.py convert --merged DIR     # DIR -> f16, Q4_K_M, Q8_0 GGUF

A benchmark tool, not a product dependency. The sources are the MIT llama.cpp that PyPI's
`llama-cpp-python` sdist vendors (no other registry is reachable here); the binaries are
built once with CMake + Ninja for this CPU (`GGML_NATIVE`, AMX off) and cached under
~/.cache/maap/llama.cpp-<version>/build-<flags>; the GGUF files under ~/.cache/maap/gguf,
keyed by the checkpoint's bytes. The conversion is llama.cpp's own `convert_hf_to_gguf.py`
(its `gguf-py` on the path; `sentencepiece`, which it imports, is installed if missing)
and `llama-quantize`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python, whose sdist carries llama.cpp's sources
CACHE = Path(os.environ.get("MAAP_CACHE", Path.home() / ".cache" / "maap"))
TARGETS = ("llama-server", "llama-quantize")
# Everything the server needs and nothing that reaches out: no web UI download, no TLS.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",  # self-contained binaries: no RPATH into the build tree
    # This VM's CPU advertises AMX, but the kernel does not grant the tile state: AMX code
    # dies with SIGILL. -march=native minus AMX (an explicit -mno-* wins over -march).
    "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
    "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
)
QUANTS = ("Q4_K_M", "Q8_0")


@dataclass(frozen=True)
class LlamaCpp:
    root: Path  # the llama.cpp source tree
    bin: Path

    @property
    def server(self) -> Path:
        return self.bin / "llama-server"

    @property
    def quantize(self) -> Path:
        return self.bin / "llama-quantize"

    def version(self) -> str:
        """What `llama-server --version` says (its build number and commit)."""
        shown = subprocess.run(
            [str(self.server), "--version"], capture_output=True, text=True, check=False
        )
        lines = (shown.stdout + shown.stderr).strip().splitlines()
        return f"{lines[0] if lines else 'unknown'} (llama-cpp-python {VERSION} sdist)"


def say(message: str) -> None:
    print(f"[llama.cpp] {message}", file=sys.stderr, flush=True)


def sources() -> Path:
    """The sdist, downloaded once from the package index, unpacked."""
    base = CACHE / f"llama.cpp-{VERSION}"
    tree = base / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if (tree / "CMakeLists.txt").is_file():
        return tree
    base.mkdir(parents=True, exist_ok=True)
    say(f"downloading the llama-cpp-python {VERSION} sdist")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"llama-cpp-python=={VERSION}", "-d", str(base)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    with tarfile.open(base / f"llama_cpp_python-{VERSION}.tar.gz") as sdist:
        sdist.extractall(base, filter="data")
    return tree


def build() -> LlamaCpp:
    tree = sources()
    flags = hashlib.sha256(" ".join(CMAKE_FLAGS + TARGETS).encode()).hexdigest()[:8]
    out = tree.parents[2] / f"build-{flags}"
    binaries = LlamaCpp(tree, out / "bin")
    if all((binaries.bin / t).is_file() for t in TARGETS):
        return binaries
    started = time.monotonic()
    say(f"building {', '.join(TARGETS)} (a few minutes on 2 cores)")
    subprocess.run(
        ["cmake", "-S", str(tree), "-B", str(out), "-G", "Ninja", *CMAKE_FLAGS],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    subprocess.run(["ninja", "-C", str(out), *TARGETS], check=True)
    say(f"built in {time.monotonic() - started:.0f} s")
    return binaries


def checkpoint_key(merged: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(merged.iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


def convert(binaries: LlamaCpp, merged: Path) -> dict[str, Path]:
    """f16 GGUF from the Hugging Face checkpoint, then each quantization of QUANTS."""
    out = CACHE / "gguf" / checkpoint_key(merged)
    out.mkdir(parents=True, exist_ok=True)
    f16 = out / "model-f16.gguf"
    if not f16.is_file():
        say(f"converting {merged} to GGUF (f16)")
        if importlib.util.find_spec("sentencepiece") is None:
            # The converter imports it for every Llama-family vocabulary, even BPE ones.
            say("installing sentencepiece, which llama.cpp's converter imports")
            subprocess.run([sys.executable, "-m", "pip", "install", "sentencepiece"], check=True)
        env = {**os.environ, "PYTHONPATH": str(binaries.root / "gguf-py")}
        partial = f16.with_suffix(".partial")
        subprocess.run(
            [sys.executable, str(binaries.root / "convert_hf_to_gguf.py"), str(merged),
             "--outtype", "f16", "--outfile", str(partial)],
            check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        partial.rename(f16)
    files = {"f16": f16}
    for quant in QUANTS:
        target = out / f"model-{quant}.gguf"
        if not target.is_file():
            say(f"quantizing to {quant}")
            partial = target.with_suffix(".partial")
            subprocess.run(
                [str(binaries.quantize), str(f16), str(partial), quant],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            partial.rename(target)
        files[quant] = target
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("step", choices=["build", "convert"])
    parser.add_argument("--merged", type=Path)
    args = parser.parse_args()
    binaries = build()
    print(binaries.server)
    if args.step == "convert":
        if args.merged is None:
            parser.error("convert: --merged DIR is required")
        for name, path in convert(binaries, args.merged).items():
            print(f"{name}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
