"""IOB2 tags (O, B-TYPE, I-TYPE): what NER rows are labelled with, the trainer scores and the
server joins into entities. One decoder, so the F1 measured in training counts the entities
the server returns."""

from __future__ import annotations

from collections.abc import Sequence


def is_tag(name: str) -> bool:
    prefix, dash, kind = name.partition("-")
    return name == "O" or (prefix in ("B", "I") and bool(dash) and bool(kind))


def entity_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(start, end, type) spans over the tags' positions, end exclusive, in order.

    B-X starts an entity, I-X continues an X (and starts one after any other tag, as
    conlleval reads it), any other tag ends it.
    """
    spans: list[tuple[int, int, str]] = []
    start, kind = 0, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, this = tag.partition("-")
        if prefix == "I" and kind and this == kind:
            continue
        if kind:
            spans.append((start, i, kind))
            kind = ""
        if prefix in ("B", "I") and this:
            start, kind = i, this
    return spans
