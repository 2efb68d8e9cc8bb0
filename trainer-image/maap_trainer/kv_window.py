"""How long a KV cache an export's sliding-window layers need, whoever loads the export.

The builder gives sliding-window layers (Gemma 2 and 3; Mistral and Phi-3 with a window)
a windowed KV cache: ONNX Runtime GenAI sizes it min(max_length, window + slack), and ONNX
Runtime's GroupQueryAttention refuses one shorter than the window, so a generator whose
search.max_length is under the window fails on its first token (`sliding_window_cache: KV
cache capacity (69) must be at least local_window_size (4096)`: the parity gate's 53-token
prompt plus 16 tokens, on Gemma 2). Every generator and engine of such an export is given
at least the window; how long its answers may be is the caller's to limit, by token count.
"""

from __future__ import annotations

import json
from pathlib import Path


def kv_window(model_dir: Path) -> int:
    """The window of the export's windowed layers, 0 when none slides."""
    config = json.loads((model_dir / "genai_config.json").read_text(encoding="utf-8"))
    window = config.get("model", {}).get("decoder", {}).get("sliding_window") or {}
    if not window.get("layers"):
        return 0
    return int(window.get("window_size", 0))
