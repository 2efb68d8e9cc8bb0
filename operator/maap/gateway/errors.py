"""OpenAI-style error bodies for every failure the gateway answers with.

The handlers are the model server's ({"error": {message, type, param, code}}), so a client
sees one error format through the gateway and from a model server behind it.
"""

from __future__ import annotations

from fastapi import FastAPI
from maap_trainer.serve.common import install_error_handlers as _install
from maap_trainer.serve.protocol import APIError

__all__ = ["APIError", "install_error_handlers", "not_found"]

# Parts of a request error's location that are no field: the body, the query, the form.
_NOT_FIELDS = frozenset({"body", "query", "form", "str"})


def not_found(kind: str, ident: str, param: str | None = None) -> APIError:
    """A 404 that says the same for a missing object and another tenant's object."""
    code = kind.replace(" ", "_").replace("-", "_") + "_not_found"
    return APIError(404, f"no {kind} with id {ident!r}", param=param, code=code)


def install_error_handlers(app: FastAPI) -> None:
    _install(app, skip=_NOT_FIELDS)
