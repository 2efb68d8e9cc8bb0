"""Where maap's model server spends one stream's time: py-spy samples of the server process.

    python bench/profile_server.py --model-dir DIR --out /tmp/prof [--tokens 128] [--streams 4]

Starts the server, warms it up, then samples it with py-spy (`--native`, every thread)
while --streams single greedy streams of exactly --tokens tokens run one after another.
Each sample is one thread's stack; this prints, per thread, the share of samples in each
place that matters (the engine's step, our per-token work, the event loop's SSE and HTTP
work, idle waits) as JSON, and keeps py-spy's raw folded stacks in --out for a flame graph.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from streams import stream_one  # noqa: E402

from tests.serving import running_server  # noqa: E402

# (label, substrings of a folded stack, checked in order: the first that matches wins)
ENGINE = ("run (onnxruntime_genai", "Engine::Run", "OrtRun", "onnxruntime::")
HTTP = ("send (", "write (", "StreamingResponse", "h11", "httptools")
WAITS = ("select (", "wait (", "_wait_for_tstate_lock", "epoll")
PLACES = [
    ("engine step (ONNX Runtime)", ENGINE),
    ("per-token decode (tokenizer stream, stop matcher)", ("on_token (",)),
    ("hand-off to the event loop", ("call_soon_threadsafe", "push (")),
    ("SSE chunk building (json)", ("chat_chunks (", "completion_chunks (", "sse (")),
    ("HTTP response writing (uvicorn, starlette)", HTTP),
    ("request parsing, chat template, tokenizing", ("render_chat (", "encode (")),
    ("waiting (idle: select, lock, condition)", WAITS),
]


def place_of(stack: str) -> str:
    for label, needles in PLACES:
        if any(n in stack for n in needles):
            return label
    return "other"


def summarize(folded: Path) -> dict[str, dict[str, float]]:
    """py-spy's raw format: `thread (idle?);frame;frame... count` per line."""
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread = stack.split(";", 1)[0]
        per_thread[thread][place_of(stack)] += int(count)
    out = {}
    for thread, places in per_thread.items():
        total = sum(places.values())
        if total < 20:  # a thread that barely ran
            continue
        out[thread] = {k: round(v / total, 3) for k, v in places.most_common()}
        out[thread]["samples"] = total
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import httpx
    from export_serve import PROMPTS

    folded = args.out / "server.folded"
    with running_server(args.model_dir, args.out / "server.log") as srv, httpx.Client() as http:
        stream_one(http, srv.api, PROMPTS[0], args.tokens)  # warm-up
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(srv.process.pid), "--rate", str(args.rate),
             "--native", "--threads", "--idle", "--format", "raw", "--output", str(folded)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(1.0)  # py-spy attaches
        runs = [stream_one(http, srv.api, p, args.tokens) for p in PROMPTS[: args.streams]]
        spy.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
        _, errors = spy.communicate(timeout=60)
        if not folded.is_file():
            raise SystemExit(f"py-spy wrote nothing: {errors.decode(errors='replace')[-2000:]}")
    report = {
        "streams": runs,
        "threads": summarize(folded),
        "folded": str(folded),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
