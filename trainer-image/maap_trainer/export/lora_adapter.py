"""LoRA as a separately loadable ONNX Runtime adapter, for one base model and many fine-tunes.

The GenAI builder's own `adapter_path` option bakes the adapter into the graph as constant
weights, so the result is one more merged model. Instead:

1. the base checkpoint is exported once with a LoRA *slot* beside each adapted projection:
   `y = x @ W + (x @ A) @ B`, where A and B are graph inputs whose default value is an empty
   tensor (rank 0), so without an adapter the model computes exactly the base model;
2. each fine-tune's adapter becomes an `.onnx_adapter` file (ONNX Runtime's adapter format)
   holding A and B (with LoRA's scaling folded into B) under the slot input names.

ONNX Runtime GenAI loads such files with `og.Adapters` and switches them per generator.
The rank is a symbolic dimension, so adapters of any rank fit the same base. DoRA (its
magnitude vector rescales the base weight) and adapters that train whole modules
(`modules_to_save`) are not additive low-rank updates and cannot be expressed this way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maap_trainer.export.genai_build import ExportError

SLOTS_FILE = "lora_slots.json"
ADAPTER_SUFFIX = ".onnx_adapter"
# The builder keeps q/k/v apart only when asked: one slot per projection needs them apart.
BASE_BUILD_OPTIONS = ("fuse_qkv=false",)

_MODULE = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)$")
_GRAPH_BLOCK = {"self_attn": "attn", "mlp": "mlp"}


@dataclass(frozen=True)
class LoraWeights:
    """One adapted projection: A is [in, r], B is [r, out] with the LoRA scaling folded in."""

    module: str
    slot: str
    a: Any
    b: Any


_NUMPY_DTYPES = {"float": "float32", "float16": "float16"}


def _graph_path(slot: str) -> str:
    """model.layers.3.attn.q_proj -> /model/layers.3/attn/q_proj (the builder's node names)."""
    _, _, layer, block, proj = slot.split(".")
    return f"/model/layers.{layer}/{block}/{proj}"


def slot_name(module: str) -> str:
    """The graph location of a Hugging Face module, e.g. layers.3.self_attn.q_proj."""
    match = _MODULE.search(module)
    if match is None:
        raise ExportError(
            f"export.adapter: the adapter trains {module!r}, which has no LoRA slot in the "
            "ONNX graph (only the attention and MLP projections of decoder layers do); "
            "set export.adapter: false or method.lora.targetModules to those projections"
        )
    layer, block, proj = match.groups()
    return f"model.layers.{layer}.{_GRAPH_BLOCK[block]}.{proj}"


def read_peft_adapter(base_checkpoint: Path, adapter_dir: Path) -> list[LoraWeights]:
    """Load the adapter with peft itself, so rank/alpha patterns and rsLoRA scale correctly."""
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise ExportError(
            f"export.adapter: {adapter_dir} holds a {config.get('peft_type')} adapter; only "
            "LoRA adapters export as ONNX adapters"
        )
    if config.get("use_dora"):
        raise ExportError(
            "export.adapter: DoRA adapters rescale the base weights by a learned magnitude, "
            "which an additive ONNX adapter cannot express; set export.adapter: false"
        )
    if config.get("modules_to_save"):
        raise ExportError(
            f"export.adapter: the adapter trains whole modules ({config['modules_to_save']}), "
            "which an ONNX adapter cannot carry; set export.adapter: false"
        )
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(("pissa", "olora", "corda", "eva", "loftq")):
        raise ExportError(
            f"export.adapter: {init} initialisation rewrites the base weights, so the adapter "
            "does not apply to the original base model; set export.adapter: false"
        )
    base = AutoModelForCausalLM.from_pretrained(base_checkpoint, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir)
    weights = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        if module.lora_bias.get("default", False):
            raise ExportError(f"export.adapter: {name} has a LoRA bias, which is not supported")
        a = module.lora_A["default"].weight.detach().float()  # [r, in]
        b = module.lora_B["default"].weight.detach().float()  # [out, r]
        scaling = float(module.scaling["default"])
        weights.append(
            LoraWeights(name, slot_name(name), a.T.contiguous().numpy(), (b * scaling).T.numpy())
        )
    if not weights:
        raise ExportError(f"export.adapter: {adapter_dir} adapts no module")
    return weights


def _graph_dtype(model: Any) -> int:
    for output in model.graph.output:
        if output.name == "logits":
            return output.type.tensor_type.elem_type
    raise ExportError("export.adapter: the exported graph has no logits output")


def add_lora_slots(model_dir: Path, slots: list[tuple[str, int, int]]) -> dict[str, Any]:
    """Insert a LoRA slot (graph inputs A, B with empty defaults) per (slot, in, out)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    path = model_dir / "model.onnx"
    # Weights stay in model.onnx.data; only the graph (and the empty defaults) is rewritten.
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    dtype = _graph_dtype(model)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    position = {node.output[0]: i for i, node in enumerate(graph.node) if node.output}
    inserts: list[tuple[int, list[Any]]] = []
    manifest = []
    for slot, fan_in, fan_out in slots:
        graph_path = _graph_path(slot)
        output = f"{graph_path}/MatMul/output_0"
        if output not in position:
            raise ExportError(
                f"export.adapter: no projection {output} in the exported graph; this model's "
                "layout is not supported for ONNX adapters"
            )
        index = position[output]
        projection = graph.node[index]
        x = projection.input[0]
        a_name, b_name = f"{slot}.lora_A.weight", f"{slot}.lora_B.weight"
        graph.input.append(helper.make_tensor_value_info(a_name, dtype, [fan_in, "lora_rank"]))
        graph.input.append(helper.make_tensor_value_info(b_name, dtype, ["lora_rank", fan_out]))
        graph.initializer.append(numpy_helper.from_array(np.zeros((fan_in, 0), np_dtype), a_name))
        graph.initializer.append(numpy_helper.from_array(np.zeros((0, fan_out), np_dtype), b_name))
        base_output = f"{graph_path}/MatMul/base_output_0"
        projection.output[0] = base_output
        down, up = f"{graph_path}/lora_A/output_0", f"{graph_path}/lora_B/output_0"
        inserts.append(
            (
                index,
                [
                    helper.make_node("MatMul", [x, a_name], [down], name=f"{graph_path}/lora_A"),
                    helper.make_node("MatMul", [down, b_name], [up], name=f"{graph_path}/lora_B"),
                    helper.make_node("Add", [base_output, up], [output], name=f"{graph_path}/lora"),
                ],
            )
        )
        manifest.append({"slot": slot, "in": fan_in, "out": fan_out, "a": a_name, "b": b_name})
    # Insert after each projection, from the back, so the graph stays topologically sorted.
    for index, nodes in sorted(inserts, key=lambda item: item[0], reverse=True):
        for offset, node in enumerate(nodes, start=1):
            graph.node.insert(index + offset, node)
    onnx.save(model, str(path))
    info = {"dtype": onnx.TensorProto.DataType.Name(dtype).lower(), "slots": manifest}
    (model_dir / SLOTS_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


def slots_for(weights: list[LoraWeights]) -> list[tuple[str, int, int]]:
    return [(w.slot, int(w.a.shape[0]), int(w.b.shape[1])) for w in weights]


def write_adapter(weights: list[LoraWeights], base_onnx: Path, target: Path) -> dict[str, Any]:
    """Write an .onnx_adapter for a base exported with slots; check every module fits one."""
    import numpy as np
    import onnxruntime as ort

    try:
        info = json.loads((base_onnx / SLOTS_FILE).read_text(encoding="utf-8"))
    except OSError:
        raise ExportError(
            f"--base-onnx: {base_onnx} has no {SLOTS_FILE}; export the base with "
            "export.adapter: true first"
        ) from None
    slots = {s["slot"]: s for s in info["slots"]}
    dtype = _NUMPY_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ExportError(
            f"export.adapter: the base graph computes in {info['dtype']}, which ONNX adapters "
            "cannot be written in here; use precision fp32, int8 or int4"
        )
    parameters = {}
    ranks = set()
    for w in weights:
        slot = slots.get(w.slot)
        if slot is None:
            raise ExportError(
                f"export.adapter: the adapter trains {w.module}, but the base export has no slot "
                f"for it (slots: {len(slots)}); export the base with the same target modules"
            )
        if (slot["in"], slot["out"]) != (w.a.shape[0], w.b.shape[1]):
            raise ExportError(
                f"export.adapter: {w.module} is {w.a.shape[0]}x{w.b.shape[1]}, the base slot is "
                f"{slot['in']}x{slot['out']}: the adapter was trained on another base model"
            )
        ranks.add(int(w.a.shape[1]))
        parameters[slot["a"]] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(w.a, dtype))
        parameters[slot["b"]] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(w.b, dtype))
    # A slot the adapter does not train gets rank 0 (the base behaviour), so every slot input
    # has a value whichever adapters are active.
    for slot in slots.values():
        if slot["a"] not in parameters:
            parameters[slot["a"]] = ort.OrtValue.ortvalue_from_numpy(
                np.zeros((slot["in"], 0), dtype)
            )
            parameters[slot["b"]] = ort.OrtValue.ortvalue_from_numpy(
                np.zeros((0, slot["out"]), dtype)
            )
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters(parameters)
    target.parent.mkdir(parents=True, exist_ok=True)
    adapter.export_adapter(str(target))
    return {
        "path": str(target),
        "sizeBytes": target.stat().st_size,
        "modules": len(weights),
        "rank": sorted(ranks),
    }


def convert_adapter(
    adapter_dir: Path, base_checkpoint: Path, base_onnx: Path, output: Path
) -> dict[str, Any]:
    """Another fine-tune of the same base, as an adapter for an existing base export."""
    for flag, path in (("--adapter-dir", adapter_dir), ("--base-checkpoint", base_checkpoint)):
        if not path.is_dir():
            raise ExportError(f"{flag}: {path} is not a directory")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ExportError(f"--adapter-dir: {adapter_dir} has no adapter_config.json")
    return write_adapter(read_peft_adapter(base_checkpoint, adapter_dir), base_onnx, output)
