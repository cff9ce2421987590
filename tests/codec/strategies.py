"""Hypothesis strategies for the codec and engine tests.

The schema-driven strategies live in the product
(:mod:`dfachat.conformance.strategies`, which the conformance fuzzer draws
from too) and are re-exported here under the names the tests use; only
:func:`examples`, which scales a test's example count, is test-only.
"""

from __future__ import annotations

import os

from dfachat.conformance.strategies import (
    ENCODING_NAMES,
    INTERESTING,
    VERSIONS,
    alphabet,
    any_message,
    codec_of,
    encodings,
    extreme_message,
    extreme_value,
    field_strategy,
    fold_key,
    ident_at,
    int_bounds,
    message_strategy,
    messages_and_encodings,
    text_strategy,
    unencodable_char,
    versions,
    widest_char,
)

__all__ = [
    "ENCODING_NAMES",
    "INTERESTING",
    "VERSIONS",
    "alphabet",
    "any_message",
    "codec_of",
    "encodings",
    "examples",
    "extreme_message",
    "extreme_value",
    "field_strategy",
    "fold_key",
    "ident_at",
    "int_bounds",
    "message_strategy",
    "messages_and_encodings",
    "text_strategy",
    "unencodable_char",
    "versions",
    "widest_char",
]

EXAMPLES_SCALE = float(os.environ.get("DFACHAT_EXAMPLES_SCALE", "1"))


def examples(n: int) -> int:
    """``n`` Hypothesis examples, scaled by $DFACHAT_EXAMPLES_SCALE for a longer run."""
    return max(1, round(n * EXAMPLES_SCALE))
