"""The admin API of the model server: LoRA adapters added and removed while it serves.

One server on the SmolLM2 base exported with LoRA slots, started with no adapter; two
fine-tunes (made without training, as in test_adapter_export) are added over HTTP and must
answer as PyTorch does on their merged checkpoints. The server's resident memory is read
after each step: an adapter must cost a small fraction of what a second base would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.adapter_fixtures import MAX_TOKENS, PROMPTS, FineTune, pytorch_answers
from tests.export_fixtures import ExportRun
from tests.serving import Server, running_server

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "admin-token-for-tests"
CLIENT_TOKEN = "client-token-for-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CLIENT = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
TOKEN_ENV = {"MAAP_TEST_ADMIN_TOKEN": ADMIN_TOKEN, "MAAP_TEST_CLIENT_TOKEN": CLIENT_TOKEN}
TOKEN_FLAGS = ("--auth-token-env", "MAAP_TEST_CLIENT_TOKEN",
               "--admin-token-env", "MAAP_TEST_ADMIN_TOKEN")  # fmt: skip
# Long enough that an admin call made after the first piece lands before the last one.
LONG_TOKENS = 96


@pytest.fixture(scope="module")
def adapter_files(
    base_model_dir: Path,
    exported: tuple[Path, dict],
    fine_tunes: list[FineTune],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """The .onnx_adapter of each fine-tune, for the one slotted base export."""
    from maap_trainer.export.lora_adapter import convert_adapter

    out, info = exported
    second = tmp_path_factory.mktemp("adapters") / "second.onnx_adapter"
    convert_adapter(fine_tunes[1].adapter, base_model_dir, out / "onnx-base", second)
    return {"first": Path(info["adapter"]["path"]), "second": second}


@pytest.fixture(scope="module")
def expected(base_model_dir: Path, fine_tunes: list[FineTune]) -> dict[str, dict[str, str]]:
    first, second = fine_tunes
    answers = {
        "base": pytorch_answers(base_model_dir),
        "first": pytorch_answers(first.merged),
        "second": pytorch_answers(second.merged),
    }
    assert answers["first"] != answers["base"] != answers["second"]
    return answers


@pytest.fixture(scope="module")
def tokens_in_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:  # the server process inherits them
        for name, value in TOKEN_ENV.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def server(
    exported: tuple[Path, dict],
    tokens_in_env: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    out, _ = exported
    log = tmp_path_factory.mktemp("admin-server") / "serve.log"
    with running_server(out / "onnx-base", log, "--model-name", "base", *TOKEN_FLAGS) as srv:
        yield srv


# -- helpers ----------------------------------------------------------------------------


def chat_body(model: str, prompt: str, max_tokens: int = MAX_TOKENS, **extra: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, **extra}  # fmt: skip


def ask(srv: Server, model: str, prompt: str, **extra: Any) -> str:
    response = httpx.post(f"{srv.api}/chat/completions", json=chat_body(model, prompt, **extra),
                          headers=CLIENT, timeout=120)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def add_adapter(srv: Server, name: str, path: Path | str) -> httpx.Response:
    body = {"name": name, "path": str(path)}
    return httpx.post(f"{srv.base}/admin/adapters", json=body, headers=ADMIN, timeout=120)


def listed(srv: Server) -> dict[str, dict]:
    response = httpx.get(f"{srv.base}/admin/adapters", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return {a["name"]: a for a in response.json()["data"]}


def rss_bytes(srv: Server) -> int:
    for line in Path(f"/proc/{srv.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


class Stream:
    """A streamed chat completion in a thread: its text, and when its first and last
    pieces arrived."""

    def __init__(self, srv: Server, body: dict) -> None:
        self.first_piece = threading.Event()
        self.finished_at = 0.0
        self._pool = ThreadPoolExecutor(1)
        self._text = self._pool.submit(self._read, srv, {**body, "stream": True})

    def _read(self, srv: Server, body: dict) -> str:
        pieces = []
        with httpx.stream("POST", f"{srv.api}/chat/completions", json=body, headers=CLIENT,
                          timeout=120) as response:  # fmt: skip
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                assert "error" not in chunk, chunk
                if piece := chunk["choices"][0]["delta"].get("content"):
                    pieces.append(piece)
                    self.first_piece.set()
        self.finished_at = time.monotonic()
        return "".join(pieces)

    def text(self) -> str:
        try:
            return self._text.result(timeout=180)
        finally:
            self._pool.shutdown()


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


# -- the tests, in order: they share one server -----------------------------------------


def test_adapters_added_at_runtime_answer_like_their_fine_tunes_and_cost_little_memory(
    server: Server,
    exported: tuple[Path, dict],
    adapter_files: dict[str, Path],
    expected: dict[str, dict[str, str]],
) -> None:
    out, _ = exported
    base_on_disk = sum(f.stat().st_size for f in (out / "onnx-base").rglob("*") if f.is_file())
    assert [m["id"] for m in httpx.get(f"{server.api}/models", headers=CLIENT).json()["data"]] == [
        "base"
    ]
    loaded_rss = rss_bytes(server)
    # Warm both paths a request takes (the engine, and a generator of its own), so that the
    # first adapter request is not charged with the arenas every request shares.
    assert ask(server, "base", PROMPTS[0]) == expected["base"][PROMPTS[0]]
    ask(server, "base", PROMPTS[0], temperature=0.7, seed=1)
    rss = {"base": rss_bytes(server)}

    for name in ("first", "second"):
        response = add_adapter(server, name, adapter_files[name])
        assert response.status_code == 201, response.text
        model = response.json()
        assert model["id"] == name and model["object"] == "model" and model["parent"] == "base"
        assert ask(server, name, PROMPTS[0]) == expected[name][PROMPTS[0]]
        rss[name] = rss_bytes(server)

    models = httpx.get(f"{server.api}/models", headers=CLIENT).json()["data"]
    assert [(m["id"], m.get("parent")) for m in models] == [
        ("base", None), ("first", "base"), ("second", "base"),
    ]  # fmt: skip
    work = [(model, prompt) for model in expected for prompt in PROMPTS]
    with ThreadPoolExecutor(len(work)) as pool:  # base and both adapters, all at once
        served = dict(zip(work, pool.map(lambda w: ask(server, *w), work), strict=True))
    for (model, prompt), text in served.items():
        assert text == expected[model][prompt], (model, prompt)

    loaded = listed(server)
    assert set(loaded) == {"first", "second"}
    for name, path in adapter_files.items():
        entry = loaded[name]
        assert entry["path"] == str(path) and entry["size_bytes"] == path.stat().st_size
        assert entry["state"] == "loaded" and entry["source"] == "admin"
        assert abs(entry["loaded_at"] - time.time()) < 600

    grown = {"first": rss["first"] - rss["base"], "second": rss["second"] - rss["first"]}
    print(
        f"\nRSS: base loaded {mib(loaded_rss)}, after a first request {mib(rss['base'])} "
        f"(export on disk {mib(base_on_disk)}); "
        + "; ".join(
            f"+{name} {mib(rss[name])} (grew {mib(grown[name])}, "
            f"adapter file {mib(adapter_files[name].stat().st_size)})"
            for name in grown
        )
    )
    for name, growth in grown.items():
        # A duplicated model would grow by about the base's size; an adapter by its file.
        assert growth < 0.25 * base_on_disk, (name, mib(growth), mib(base_on_disk))


def test_an_adapter_added_while_another_streams_leaves_both_right(
    server: Server, adapter_files: dict[str, Path]
) -> None:
    body = chat_body("first", PROMPTS[2], max_tokens=LONG_TOKENS, min_tokens=LONG_TOKENS)
    stream = Stream(server, body)
    assert stream.first_piece.wait(120)
    response = add_adapter(server, "third", adapter_files["second"])  # the same fine-tune
    added_at = time.monotonic()
    assert response.status_code == 201, response.text
    streamed = stream.text()
    assert added_at < stream.finished_at, "the stream ended before the adapter was added"
    assert streamed == ask(server, "first", PROMPTS[2], max_tokens=LONG_TOKENS,
                           min_tokens=LONG_TOKENS)  # fmt: skip
    assert ask(server, "third", PROMPTS[1]) == ask(server, "second", PROMPTS[1])


def test_deleting_an_adapter_lets_its_running_requests_finish(
    server: Server, adapter_files: dict[str, Path]
) -> None:
    body = chat_body("third", PROMPTS[2], max_tokens=LONG_TOKENS, min_tokens=LONG_TOKENS)
    stream = Stream(server, body)
    assert stream.first_piece.wait(120)
    before = rss_bytes(server)
    response = httpx.delete(f"{server.base}/admin/adapters/third", headers=ADMIN, timeout=30)
    deleted_at = time.monotonic()
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "third", "object": "model", "deleted": True, "in_flight": 1}
    # From now on nobody new gets it, while the running stream keeps going.
    refused = httpx.post(f"{server.api}/chat/completions", json=chat_body("third", "Hi"),
                         headers=CLIENT, timeout=30)  # fmt: skip
    assert error_of(refused, 404)["code"] == "model_not_found"
    assert "third" not in [m["id"] for m in httpx.get(f"{server.api}/models",
                                                      headers=CLIENT).json()["data"]]  # fmt: skip
    assert listed(server)["third"]["state"] == "unloading"
    streamed = stream.text()
    assert deleted_at < stream.finished_at, "the stream ended before the delete"
    assert streamed == ask(server, "second", PROMPTS[2], max_tokens=LONG_TOKENS,
                           min_tokens=LONG_TOKENS)  # fmt: skip
    deadline = time.monotonic() + 30
    while "third" in listed(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "third" not in listed(server), "the adapter was not unloaded after its last request"
    print(f"\nRSS: {mib(before)} with third loaded, {mib(rss_bytes(server))} after its unload")

    missing = httpx.delete(f"{server.base}/admin/adapters/third", headers=ADMIN, timeout=30)
    assert error_of(missing, 404)["code"] == "adapter_not_found"
    again = add_adapter(server, "third", adapter_files["second"])  # the name is free again
    assert again.status_code == 201, again.text
    assert ask(server, "third", PROMPTS[1]) == ask(server, "second", PROMPTS[1])
    gone = httpx.delete(f"{server.base}/admin/adapters/third", headers=ADMIN, timeout=30)
    assert gone.json()["in_flight"] == 0


def write_adapter_file(path: Path, tensors: dict[str, Any]) -> Path:
    import onnxruntime as ort

    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in tensors.items()})
    adapter.export_adapter(str(path))
    return path


def test_bad_adapters_and_names_are_refused(
    server: Server, adapter_files: dict[str, Path], tmp_path: Path
) -> None:
    import numpy as np
    import onnxruntime as ort

    garbage = tmp_path / "garbage.onnx_adapter"
    garbage.write_bytes(np.random.default_rng(0).bytes(50_000))
    real = ort.AdapterFormat.read_adapter(str(adapter_files["second"])).get_parameters()
    # The same projections for a base with half this one's hidden size: A's fan-in halved.
    other_base = write_adapter_file(tmp_path / "other-base.onnx_adapter", {
        name: np.zeros((v.shape()[0] // 2, v.shape()[1]) if ".lora_A." in name else v.shape(),
                       np.float32)
        for name, v in real.items()
    })  # fmt: skip
    other_arch = write_adapter_file(tmp_path / "other-arch.onnx_adapter", {
        "transformer.h.0.attn.c_attn.lora_A.weight": np.zeros((576, 4), np.float32),
        "transformer.h.0.attn.c_attn.lora_B.weight": np.zeros((4, 1728), np.float32),
    })  # fmt: skip
    rejected = [
        (garbage, "ONNX Runtime cannot load it: The buffer does not appear to be a valid lora"),
        (other_base, "its tensors do not fit this model: Got invalid dimensions for input"),
        (other_arch, "its tensors do not fit this model: Invalid input name: transformer.h.0"),
    ]
    for path, message in rejected:
        error = error_of(add_adapter(server, "broken", path), 400)
        assert error["param"] == "path" and error["code"] == "adapter_rejected", error
        assert error["message"].startswith(f"path: {path}: {message}"), error
        assert "\n" not in error["message"] and ".cc:" not in error["message"], error

    for value, message in [
        ("relative/file.onnx_adapter", "path: must be an absolute path"),
        (str(tmp_path / "missing.onnx_adapter"), "does not exist"),
        (str(tmp_path), "is not a file"),
    ]:
        error = error_of(add_adapter(server, "broken", value), 400)
        assert error["param"] == "path" and message in error["message"], error

    good = adapter_files["first"]
    for name, message in [
        ("", "name: must not be empty"),
        ("x" * 257, "name: must be at most 256 characters"),
        ("two words", "name: must not contain whitespace"),
        ("tab\there", "name: must not contain whitespace"),
        ("bell\x07", "name: must not contain whitespace or control characters"),
        ("base", "name: 'base' is the base model's name"),
    ]:
        error = error_of(add_adapter(server, name, good), 400)
        assert error["param"] == "name" and error["message"].startswith(message), error
    conflict = error_of(add_adapter(server, "first", adapter_files["second"]), 409)
    assert conflict["param"] == "name" and conflict["code"] == "adapter_exists"

    for body, param in [({"name": "x"}, "path"), ({"path": str(good)}, "name"),
                        ({"name": 5, "path": str(good)}, "name")]:  # fmt: skip
        response = httpx.post(f"{server.base}/admin/adapters", json=body, headers=ADMIN)
        assert error_of(response, 400)["param"] == param

    assert set(listed(server)) == {"first", "second"}  # nothing rejected stayed loaded
    assert ask(server, "first", "Hi") and ask(server, "base", "Hi")


def test_admin_calls_need_the_admin_token_not_the_clients(server: Server) -> None:
    url = f"{server.base}/admin/adapters"
    for headers in ({}, CLIENT, {"Authorization": "Basic abc"}):
        for response in (httpx.get(url, headers=headers),
                         httpx.post(url, json={"name": "x", "path": "/x"}, headers=headers),
                         httpx.delete(f"{url}/first", headers=headers)):  # fmt: skip
            error = error_of(response, 401)
            assert error["code"] == "invalid_admin_token", error
            assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url, headers=ADMIN).status_code == 200
    assert "first" in listed(server)  # the refused DELETE did nothing
    # Each token opens its own door only.
    assert httpx.get(f"{server.api}/models", headers=ADMIN).status_code == 401
    assert httpx.get(f"{server.api}/models", headers=CLIENT).status_code == 200


# -- servers that cannot take adapters, and bad flags -----------------------------------


def test_the_admin_api_is_off_without_its_flag_and_refuses_a_model_without_lora_inputs(
    int4_export: ExportRun,
    adapter_files: dict[str, Path],
    tokens_in_env: None,
    tmp_path: Path,
) -> None:
    with running_server(int4_export.onnx, tmp_path / "plain.log") as srv:
        body = {"name": "first", "path": str(adapter_files["first"])}
        response = httpx.post(f"{srv.base}/admin/adapters", headers=ADMIN, json=body)
        assert response.status_code == 404
        assert httpx.get(f"{srv.base}/admin/adapters", headers=ADMIN).status_code == 404
    with running_server(int4_export.onnx, tmp_path / "merged.log", *TOKEN_FLAGS) as srv:
        error = error_of(add_adapter(srv, "first", adapter_files["first"]), 400)
        assert error["code"] == "model_has_no_lora_inputs", error
        assert "no LoRA inputs" in error["message"] and "export.adapter: true" in error["message"]


def test_a_startup_adapter_the_model_cannot_take_fails_readiness_with_the_reason(
    int4_export: ExportRun,
    adapter_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    from maap_trainer.ports import free_port

    port = free_port()
    flag = f"first={adapter_files['first']}"
    with (tmp_path / "serve.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "maap_trainer", "serve", "--model-dir", str(int4_export.onnx),
             "--host", "127.0.0.1", "--port", str(port), "--adapter", flag],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline, body = time.monotonic() + 120, {}
        while time.monotonic() < deadline and body.get("status") != "failed":
            time.sleep(0.3)
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()
            except httpx.HTTPError:
                continue
        assert body.get("status") == "failed", body
        assert body["error"].startswith(f"--adapter {flag}: this model has no LoRA inputs"), body
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "--admin-token-env: the environment variable MAAP_TEST_ADMIN_TOKEN is unset or empty"),
        ({"MAAP_TEST_ADMIN_TOKEN": " "}, "--admin-token-env: the environment variable"),
        ({"MAAP_TEST_ADMIN_TOKEN": CLIENT_TOKEN},
         "--admin-token-env: the admin token must differ from the clients' token"),
    ],
)  # fmt: skip
def test_a_bad_admin_token_setting_is_one_line_naming_the_flag(
    exported: tuple[Path, dict],
    env: dict[str, str],
    message: str,
) -> None:
    out, _ = exported
    environment = {k: v for k, v in os.environ.items() if k not in TOKEN_ENV}
    environment |= {"MAAP_TEST_CLIENT_TOKEN": CLIENT_TOKEN, **env}
    done = subprocess.run(
        [sys.executable, "-m", "maap_trainer", "serve", "--model-dir", str(out / "onnx-base"),
         "--host", "127.0.0.1", "--port", "1", *TOKEN_FLAGS],
        capture_output=True, text=True, timeout=120, env=environment,
    )  # fmt: skip
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_runtime_errors_become_one_line() -> None:
    from maap_trainer.serve.adapters import runtime_message

    raw = RuntimeError(
        "/onnxruntime_src/onnxruntime/lora/adapter_format_utils.cc:83 std::pair<std::unique_ptr"
        "<char [], std::function<void(void*)> >, long unsigned int> onnxruntime::adapters::utils"
        "::MemoryMapAdapterFile(const std::filesystem::__cxx11::path&) [ONNXRuntimeError] : 2 :"
        " INVALID_ARGUMENT : Invalid fd was supplied: -1\n"
    )
    assert runtime_message(raw) == "Invalid fd was supplied: -1"
    shaped = RuntimeError("Got invalid dimensions for input: a, indices\n index: 0")
    assert runtime_message(shaped) == "Got invalid dimensions for input: a, indices index: 0"


def test_the_serve_flags_document_the_admin_api() -> None:
    done = subprocess.run([sys.executable, "-m", "maap_trainer", "serve", "--help"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "--admin-token-env" in done.stdout and "/admin/adapters" in done.stdout
