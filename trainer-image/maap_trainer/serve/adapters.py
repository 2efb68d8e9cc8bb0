"""The LoRA adapters a model server serves: their names, files, and runtime keys.

A served name maps to a runtime key, unique for the server's life, so that a name can be
loaded again while its previous adapter still finishes the requests it had accepted.
"""

from __future__ import annotations

import itertools
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_NAME_LENGTH = 256
# "/onnxruntime_src/…/adapter_format_utils.cc:93 const Adapter* utils::Validate…(gsl::span<…>) "
_SOURCE_LOCATION = re.compile(r"^\S+\.(?:cc|cpp|h):\d+ ")
_ORT_STATUS = re.compile(r"\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")


class AdapterRejected(Exception):
    """The runtime refused an adapter file; the message says why, in one line."""


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    key: str
    path: Path
    size_bytes: int
    loaded_at: float
    source: str  # "startup" (--adapter) or "admin" (POST /admin/adapters)

    def model_object(self, parent: str) -> dict[str, Any]:
        """As /v1/models lists it."""
        return {"id": self.name, "object": "model", "created": int(self.loaded_at),
                "owned_by": "maap", "parent": parent}  # fmt: skip

    def admin_object(self, state: str, in_flight: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "loaded_at": int(self.loaded_at),
            "source": self.source,
            "state": state,
            "in_flight": in_flight,
        }


class AdapterRegistry:
    """Served names to adapters. Used from the event loop (and the loader before it serves)."""

    def __init__(self) -> None:
        self._served: dict[str, AdapterInfo] = {}
        self._loading: set[str] = set()
        self._retired: list[AdapterInfo] = []
        self._serial = itertools.count(1)

    def new_key(self, name: str) -> str:
        return f"{next(self._serial)}:{name}"  # served_name() reads it back

    def taken(self, name: str) -> bool:
        return name in self._served or name in self._loading

    def reserve(self, name: str) -> None:
        """Hold the name while its adapter loads, so a second request for it is a conflict."""
        self._loading.add(name)

    def release(self, name: str) -> None:
        self._loading.discard(name)

    def add(self, name: str, path: Path, size: int, key: str, source: str) -> AdapterInfo:
        info = AdapterInfo(name, key, path, size, time.time(), source)
        self._loading.discard(name)
        self._served[name] = info
        return info

    def get(self, name: str) -> AdapterInfo | None:
        return self._served.get(name)

    def retire(self, name: str) -> AdapterInfo | None:
        """Stop serving the name; the adapter stays listed as unloading until it is freed."""
        info = self._served.pop(name, None)
        if info is not None:
            self._retired.append(info)
        return info

    def served(self) -> list[AdapterInfo]:
        return list(self._served.values())

    def retired(self) -> list[AdapterInfo]:
        return list(self._retired)

    def forget(self, info: AdapterInfo) -> None:
        """A retired adapter the runtime has unloaded."""
        self._retired.remove(info)


def served_name(key: str | None) -> str | None:
    """The served name of a runtime key."""
    return None if key is None else key.partition(":")[2]


def name_problem(name: str, base_name: str) -> str | None:
    """What is wrong with a name for an adapter, or None."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters (got {len(name)})"
    for char in name:
        if char.isspace() or unicodedata.category(char).startswith("C"):
            return f"must not contain whitespace or control characters (got {char!r})"
    if name == base_name:
        return f"{name!r} is the base model's name"
    return None


def runtime_message(exc: BaseException) -> str:
    """An ONNX Runtime error in one line, without its C++ source location and signature."""
    text = str(exc).strip()
    if location := _SOURCE_LOCATION.match(text):
        text = _after_signature(text[location.end() :])
    text = _ORT_STATUS.sub("", text)
    return " ".join(text.split()) or type(exc).__name__


def _after_signature(text: str) -> str:
    """The text after a C++ function signature: the first ')' that closes at depth 0 and is
    followed by a space (templates such as std::function<void(void*)> close deeper)."""
    depth = 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0 and text[i + 1 : i + 2] == " ":
                return text[i + 2 :]
    return text
