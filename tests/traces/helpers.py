"""Trace documents and stored traces for the trace and dataset tests."""

from typing import Any

from traces.models import Trace
from traces.services import trace_create_batch


def trace_doc(n: int = 0, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "trace_version": 1,
        "prompt": f"What is {n} + {n}?",
        "steps": [
            {"i": 0, "type": "thought", "content": f"Add {n} to itself."},
            {"i": 1, "type": "calculation", "content": f"{n} + {n} = {2 * n}"},
        ],
        "final_answer": str(2 * n),
        "meta": {"source": "arith", "n": n},
    }
    doc.update(overrides)
    return doc


def make_traces(count: int, start: int = 0, **meta: Any) -> list[Trace]:
    """Stored through the service, oldest first, each with `meta` merged in."""
    docs = [trace_doc(n) for n in range(start, start + count)]
    for doc in docs:
        doc["meta"].update(meta)
    return trace_create_batch(traces=docs, created_by=None)
