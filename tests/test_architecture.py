"""Control plane and data plane stay apart: checked on the real import graph."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import maap
import maap_trainer


def modules(package) -> list[str]:
    return [
        m.name
        for m in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
        if not m.name.endswith("__main__")
    ]


def imported_after(names: list[str]) -> set[str]:
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({n!r})\n" for n in names)
    code += "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_control_plane_never_imports_torch() -> None:
    loaded = imported_after(modules(maap))
    assert not loaded & {"torch", "transformers", "peft", "onnxruntime_genai", "deepspeed"}


def test_data_plane_never_imports_kubernetes() -> None:
    loaded = imported_after(modules(maap_trainer))
    assert not loaded & {"kopf", "kubernetes", "maap"}


def test_the_api_imports_neither_plane() -> None:
    """maap_api (the FineTuneJob API and its rules) is pydantic only: both images carry it."""
    import maap_api

    loaded = imported_after(modules(maap_api))
    assert not loaded & {"torch", "transformers", "kopf", "kubernetes", "maap", "maap_trainer"}
