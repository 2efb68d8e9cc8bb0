"""The console's gateway side, no browser and no training: the history endpoint (auth,
tenancy, 404, the points a job logged), the job object's method, the page and its assets
served from the package with a strict CSP, and the committed build matching console/.

The browser tests over real jobs are in tests/test_e2e.py and tests/test_gateway_local.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from maap.gateway.app import GatewaySettings, create_app
from maap.gateway.console import STATIC_DIR
from maap.gateway.files import FileStore
from maap.gateway.local_backend import LocalBackend
from maap.gateway.tenancy import StaticKeys
from maap_api.history import CheckpointPoint, LogPoint, append_history

from tests.gateway_helpers import KEY_A, KEY_B, KEYS, serving_app

ROOT = Path(__file__).resolve().parents[1]
CONSOLE = ROOT / "console"
TRAIN = ROOT / "examples" / "pirate-chat" / "train.jsonl"
# What console/build.mjs digests (keep in step with its SOURCES).
SOURCES = ["build.mjs", "index.html", "package.json", "package-lock.json", "tsconfig.json", "src"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LocalBackend]]:
    state = tmp_path_factory.mktemp("console-gateway")
    files = FileStore(state / "files")
    backend = LocalBackend(state, files, serve=False)  # worker not started: jobs stay queued
    app = create_app(
        backend, StaticKeys(KEYS), files, GatewaySettings(b"k" * 32, run_backend=False)
    )
    with serving_app(app) as base:
        yield base.removesuffix("/v1"), backend


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_job(base: str, key: str, **maap: object) -> dict:
    upload = httpx.post(f"{base}/v1/files", headers=auth(key), data={"purpose": "fine-tune"},
                        files={"file": ("train.jsonl", TRAIN.read_bytes())})  # fmt: skip
    assert upload.status_code == 200, upload.text
    body = {"model": "smollm2-135m-instruct", "training_file": upload.json()["id"]}
    if maap:
        body["maap"] = maap
    created = httpx.post(f"{base}/v1/fine_tuning/jobs", headers=auth(key), json=body)
    assert created.status_code == 200, created.text
    return created.json()


def test_the_history_endpoint_answers_the_points_a_job_logged(gateway) -> None:
    base, backend = gateway
    job = new_job(base, KEY_A)
    url = f"{base}/v1/fine_tuning/jobs/{job['id']}/history"
    empty = httpx.get(url, headers=auth(KEY_A))
    assert empty.status_code == 200, empty.text
    assert empty.json() == {
        "object": "fine_tuning.job.history",
        "fine_tuning_job_id": job["id"],
        "points": [],
        "checkpoints": [],
    }

    # What the train stage appends to the job's output folder, as it logs.
    folder = backend.store.folder("team-a", job["id"])
    append_history(folder, point=LogPoint(step=0, time=1.0, valid_loss=3.5))
    for step, loss in ((1, 3.0), (2, 2.5), (3, 2.25)):
        logged = LogPoint(step=step, time=1.0 + step, train_loss=loss, learning_rate=1e-4,
                          tokens_per_second=900.0)  # fmt: skip
        append_history(folder, point=logged)
    append_history(folder, checkpoint=CheckpointPoint(step=2, time=2.5, path="checkpoints/c-2",
                                                      train_loss=2.5))  # fmt: skip
    got = httpx.get(url, headers=auth(KEY_A)).json()
    assert [p["step"] for p in got["points"]] == [0, 1, 2, 3]
    assert got["points"][0] == {"step": 0, "time": 1.0, "valid_loss": 3.5}
    assert got["points"][2] == {"step": 2, "time": 3.0, "train_loss": 2.5,
                                "learning_rate": 1e-4, "tokens_per_second": 900.0}  # fmt: skip
    assert got["checkpoints"] == [{"step": 2, "time": 2.5, "path": "checkpoints/c-2",
                                   "train_loss": 2.5}]  # fmt: skip


def test_the_history_endpoint_has_the_gateways_auth_and_tenancy(gateway) -> None:
    base, _ = gateway
    job = new_job(base, KEY_A)
    url = f"{base}/v1/fine_tuning/jobs/{job['id']}/history"
    for headers in ({}, auth("sk-not-a-key-0123456789")):
        refused = httpx.get(url, headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_api_key"
    # Another tenant's job is not found, not forbidden: ids do not leak across tenants.
    other = httpx.get(url, headers=auth(KEY_B))
    assert other.status_code == 404 and other.json()["error"]["param"] == "fine_tuning_job_id"
    missing = httpx.get(f"{base}/v1/fine_tuning/jobs/ftjob-000000000000/history",
                        headers=auth(KEY_A))  # fmt: skip
    assert missing.status_code == 404 and "ftjob-000000000000" in missing.json()["error"]["message"]


def test_the_job_object_names_its_method(gateway) -> None:
    base, _ = gateway
    assert new_job(base, KEY_A)["maap"]["method"] == "lora"
    job = new_job(base, KEY_A, method={"type": "dora"})
    assert job["maap"]["method"] == "dora"
    listed = httpx.get(f"{base}/v1/fine_tuning/jobs", headers=auth(KEY_A)).json()["data"]
    assert {j["id"]: j["maap"]["method"] for j in listed}[job["id"]] == "dora"


def test_the_job_object_carries_the_export_conditions_and_artifacts() -> None:
    """What the job page shows beside the curve, straight from the FineTuneJob's status."""
    from maap.gateway import jobs

    obj = {
        "metadata": {"name": "ftjob-0123456789ab", "namespace": "team-a",
                     "creationTimestamp": "2026-12-01T10:00:00Z"},
        "spec": {"model": {"preset": "smollm2-135m-instruct"}, "dataset": {"path": "/d.jsonl"},
                 "method": {"type": "qlora"}},
        "status": {
            "phase": "Exporting",
            "conditions": [{"type": "Trained", "status": "True", "reason": "Completed"}],
            "export": {"precision": "int4", "executionProvider": "cpu", "sizeBytes": 90_000_000,
                       "seconds": 6.5, "parity": {"passed": True, "tokenAgreement": 0.97}},
            "artifacts": {"location": "pvc://maap-out/ftjob-0123456789ab",
                          "onnxModel": "/out/onnx"},
        },
    }  # fmt: skip
    view = jobs.openai_job(obj)["maap"]
    assert view["method"] == "qlora" and view["phase"] == "Exporting"
    assert view["export"] == obj["status"]["export"]
    assert view["conditions"] == obj["status"]["conditions"]
    assert view["artifacts"]["location"] == "pvc://maap-out/ftjob-0123456789ab"
    bare = jobs.openai_job({**obj, "status": {}})["maap"]
    assert (bare["export"], bare["artifacts"], bare["conditions"]) == (None, None, [])


def test_the_page_and_its_assets_come_from_the_gateway_only(gateway) -> None:
    base, _ = gateway
    redirect = httpx.get(f"{base}/console")
    assert redirect.status_code == 307 and redirect.headers["location"] == "/console/"
    page = httpx.get(f"{base}/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "http" not in csp
    # Served without a key: the page holds no data, the API calls it makes need one.
    linked = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(linked) == ["assets/console.css", "assets/console.js"], linked
    types = {"assets/console.js": "text/javascript", "assets/console.css": "text/css"}
    for path in linked:
        asset = httpx.get(f"{base}/console/{path}")
        assert asset.status_code == 200, path
        assert asset.headers["content-type"].startswith(types[path]), asset.headers
        # Nothing loaded from elsewhere at run time: no remote import, font or stylesheet.
        assert not re.search(r"""(import\s*\(?\s*["']https?:|url\(\s*["']?https?:)""", asset.text)
    assert httpx.get(f"{base}/console/assets/nothing.js").status_code == 404


def source_digest() -> str:
    digest = hashlib.sha256()
    paths = []
    for name in SOURCES:
        path = CONSOLE / name
        paths += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for path in sorted(paths, key=lambda p: p.relative_to(CONSOLE).as_posix()):
        digest.update(path.relative_to(CONSOLE).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def test_the_committed_build_is_the_build_of_the_sources() -> None:
    """The package ships console_static/ (no Node at install): it must be rebuilt, with
    `make console`, whenever console/ changes."""
    built = json.loads((STATIC_DIR / "build.json").read_text())
    assert built["sources"] == source_digest(), "console/ changed since its build: make console"


def test_the_wheel_carries_the_console(tmp_path: Path) -> None:
    """A non-editable install (every image) gets the built console: setuptools' package
    data, in a wheel built from what the images copy (tests/test_images.py)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    project = tmp_path / "project"
    for name in ("pyproject.toml", "README.md"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    for tree in ("api/maap_api", "operator/maap", "trainer-image/maap_trainer"):
        shutil.copytree(ROOT / tree, project / tree,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "wheel"), str(project)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("maap-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            inside = "maap/gateway/" + path.relative_to(STATIC_DIR.parent).as_posix()
            assert inside in names, f"{inside} is not in the wheel"
