"""Symmetric int8 quantisation of embedding matrices, one float32 scale per row. Pure numpy.

``scale[i] = max|x[i]| / 127`` and ``q[i] = round(x[i] / scale[i])``: the row cosine to the
original stays above 0.9999 at about a quarter of the float32 size. Frames carry embeddings this
way (:mod:`osml.wire.codec`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["dequantize_int8", "quantize_int8"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def quantize_int8(x: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a real ``(n, d)`` matrix to int8 with one symmetric float32 scale per row.

    Returns ``(q, scale)`` with ``q`` int8 of shape ``(n, d)`` in ``[-127, 127]`` and ``scale``
    float32 of shape ``(n,)``, ``scale[i] = max|x[i]| / 127``. An all-zero row gets scale 0 and
    decodes to zeros. Raises :class:`ValueError` for a non-2-D, non-real or non-finite input, or
    values beyond the float32 range.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"expected a real-valued matrix, got dtype {arr.dtype}")
    x64 = arr.astype(np.float64, copy=False)
    if not np.isfinite(x64).all():
        raise ValueError("matrix contains NaN or infinite values")
    amax = np.max(np.abs(x64), axis=1, initial=0.0)
    if amax.size and float(amax.max()) > _FLOAT32_MAX:
        raise ValueError("matrix values exceed the float32 range")
    scale = (amax / 127.0).astype(np.float32)
    # Rounding the scale up could make 127 * scale overflow float32 on dequantization;
    # step such scales one ulp towards zero (the max element then clips to 127).
    too_big = scale.astype(np.float64) * 127.0 > _FLOAT32_MAX
    if too_big.any():
        scale[too_big] = np.nextafter(scale[too_big], np.float32(0))
    divisor = np.where(scale > 0, scale.astype(np.float64), 1.0)
    q = np.clip(np.rint(x64 / divisor[:, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Invert :func:`quantize_int8`: return ``q * scale[:, None]`` as float32 ``(n, d)``.

    Raises :class:`ValueError` if the shapes or dtypes do not match or a scale is negative or
    not finite.
    """
    q = np.asarray(q)
    scale = np.asarray(scale)
    if q.ndim != 2 or q.dtype != np.int8:
        raise ValueError(f"q must be a 2-D int8 array, got {q.dtype} with shape {q.shape}")
    if scale.dtype.kind != "f" or scale.shape != (q.shape[0],):
        raise ValueError(
            f"scale must be a float array of shape ({q.shape[0]},), "
            f"got {scale.dtype} with shape {scale.shape}"
        )
    scale32 = scale.astype(np.float32, copy=False)
    if not np.isfinite(scale32).all() or (scale32 < 0).any():
        raise ValueError("scales must be finite and >= 0")
    # A hostile scale can overflow float32; callers check finiteness, so do not warn here.
    with np.errstate(over="ignore"):
        out: np.ndarray = q.astype(np.float32) * scale32[:, None]
    return out
