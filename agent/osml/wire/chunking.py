"""Splitting one round's embeddings into frames that fit the broker's packet limit."""

from __future__ import annotations

import numpy as np

from osml.wire.codec import Frame, encode_frame

__all__ = ["encode_chunks", "rows_per_chunk"]


def rows_per_chunk(dim: int, max_frame_bytes: int) -> int:
    """Rows per chunk so that a frame stays under ``max_frame_bytes`` (int8 rows + f32 scale)."""
    return max(1, (max_frame_bytes - 512) // (dim + 4))


def encode_chunks(
    *,
    context: str,
    source: str,
    round: int,
    step_start: int,
    model_version: int,
    embeddings: np.ndarray,
    max_frame_bytes: int,
    key: bytes | None,
) -> list[bytes]:
    """The encoded (and, with ``key``, signed) frames that carry ``embeddings``."""
    per = rows_per_chunk(embeddings.shape[1], max_frame_bytes)
    starts = list(range(0, len(embeddings), per))
    return [
        encode_frame(
            Frame(
                context=context,
                source=source,
                round=round,
                step_start=step_start + s,
                model_version=model_version,
                embeddings=embeddings[s : s + per],
                chunk=i,
                n_chunks=len(starts),
            ),
            key=key,
        )
        for i, s in enumerate(starts)
    ]
