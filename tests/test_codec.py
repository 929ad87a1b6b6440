"""Tests for osml.wire.codec: int8 quantization, frame round trips and hostile frames."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard

from osml.core.quantize import dequantize_int8, quantize_int8
from osml.errors import FrameError, OsmlError
from osml.wire.codec import FORMAT_VERSION, Frame, decode_frame, encode_frame


def make_frame(n: int = 50, d: int = 5, seed: int = 0, **overrides: Any) -> Frame:
    rng = np.random.default_rng(seed)
    fields: dict[str, Any] = {
        "context": "ctx-a",
        "source": "agent-7",
        "round": 12,
        "step_start": 300,
        "model_version": 4,
        "embeddings": rng.standard_normal((n, d)).astype(np.float32),
    }
    fields.update(overrides)
    return Frame(**fields)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    out: np.ndarray = num / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return out


def raw_map(data: bytes) -> dict[str, Any]:
    doc = msgpack.unpackb(data, raw=False)
    assert isinstance(doc, dict)
    return doc


def pack(doc: Any) -> bytes:
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


# --------------------------------------------------------------------------- quantization


def test_quantize_shapes_dtypes_and_scale() -> None:
    # Prepare
    x = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [-254.0, 127.0, 0.0]], dtype=np.float32)
    # Execute
    q, scale = quantize_int8(x)
    # Assert
    assert q.dtype == np.int8 and q.shape == (3, 3)
    assert scale.dtype == np.float32 and scale.shape == (3,)
    np.testing.assert_allclose(scale, [2.0 / 127, 0.0, 2.0], rtol=1e-7)
    assert q[0].tolist() == [64, -127, 32]
    assert q[2].tolist() == [-127, 64, 0]
    assert np.abs(q).max() <= 127


def test_quantize_zero_rows_decode_to_zeros() -> None:
    x = np.zeros((4, 6), dtype=np.float32)
    x[1] = np.linspace(-1, 1, 6)
    q, scale = quantize_int8(x)
    out = dequantize_int8(q, scale)
    assert out.dtype == np.float32
    assert (q[[0, 2, 3]] == 0).all()
    assert (scale[[0, 2, 3]] == 0).all()
    assert (out[[0, 2, 3]] == 0).all()
    np.testing.assert_allclose(out[1], x[1], atol=1 / 127)


@pytest.mark.parametrize(
    "value",
    [
        float(np.finfo(np.float32).max),
        -float(np.finfo(np.float32).max),
        float(np.finfo(np.float32).tiny),
        float(np.finfo(np.float32).smallest_subnormal),
        1e30,
    ],
)
def test_quantize_extreme_values_stay_finite(value: float) -> None:
    x = np.array([[value, -value / 2, 0.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    q, scale = quantize_int8(x)
    out = dequantize_int8(q, scale)
    assert np.isfinite(scale).all() and (scale >= 0).all()
    assert np.isfinite(out).all()
    assert np.sign(out[0, 0]) in (np.sign(value), 0.0)
    if abs(value) >= 1.0:
        np.testing.assert_allclose(out[0, 0], value, rtol=1e-2)
    np.testing.assert_allclose(out[1], x[1], atol=3 / 127)


def test_quantize_float64_beyond_float32_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="float32 range"):
        quantize_int8(np.array([[1e300, 1.0]]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_rejects_non_finite(bad: float) -> None:
    x = np.ones((3, 4), dtype=np.float32)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize_int8(x)


@pytest.mark.parametrize(
    "x", [np.ones(5), np.ones((2, 3, 4)), np.array([["a", "b"]]), np.ones((2, 2), dtype=bool)]
)
def test_quantize_rejects_bad_shapes_and_dtypes(x: np.ndarray) -> None:
    with pytest.raises(ValueError):
        quantize_int8(x)


def test_dequantize_rejects_mismatched_or_bad_scales() -> None:
    q = np.zeros((2, 3), dtype=np.int8)
    with pytest.raises(ValueError):
        dequantize_int8(q, np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError):
        dequantize_int8(q.astype(np.int16), np.ones(2, dtype=np.float32))
    with pytest.raises(ValueError):
        dequantize_int8(q, np.array([1.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError):
        dequantize_int8(q, np.array([1.0, -1.0], dtype=np.float32))


# --------------------------------------------------------------------------- Frame


def test_frame_properties_and_readonly_copy() -> None:
    emb = np.arange(12, dtype=np.float64).reshape(4, 3)
    frame = make_frame(embeddings=emb, step_start=10)
    assert frame.version == FORMAT_VERSION == 1
    assert frame.n_steps == 4 and frame.dim == 3 and frame.step_stop == 14
    assert frame.chunk == 0 and frame.n_chunks == 1
    assert frame.embeddings.dtype == np.float32
    emb[0, 0] = 99.0  # the frame holds its own copy
    assert frame.embeddings[0, 0] == 0.0
    with pytest.raises(ValueError):
        frame.embeddings[0, 0] = 1.0


@pytest.mark.parametrize(
    "overrides",
    [
        {"context": ""},
        {"context": "a/b"},
        {"source": "a+b"},
        {"source": "a#"},
        {"source": "a\x00b"},
        {"context": "x" * 129},
        {"context": 5},
        {"round": -1},
        {"round": True},
        {"round": 1.0},
        {"step_start": -3},
        {"model_version": "1"},
        {"version": 2},
        {"chunk": 1, "n_chunks": 1},
        {"n_chunks": 0},
        {"round": 2**63},
        {"embeddings": np.ones(5, dtype=np.float32)},
        {"embeddings": np.ones((0, 5), dtype=np.float32)},
        {"embeddings": np.ones((5, 0), dtype=np.float32)},
        {"embeddings": np.array([[1.0, np.nan]], dtype=np.float32)},
        {"embeddings": np.array([[1.0, np.inf]], dtype=np.float32)},
        {"embeddings": np.array([[1e300, 1.0]])},
    ],
)
def test_frame_validation(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_frame(**overrides)


def test_frame_requires_an_ndarray() -> None:
    with pytest.raises(TypeError):
        make_frame(embeddings=[[1.0, 2.0]])


def test_frame_accepts_numpy_ints_and_compares_by_value() -> None:
    a = make_frame(round=np.int64(3), chunk=np.uint8(1), n_chunks=2)
    b = make_frame(round=3, chunk=1, n_chunks=2)
    assert type(a.round) is int and a.round == 3
    assert a == b
    assert a != make_frame(round=3, chunk=1, n_chunks=2, seed=1)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(("n", "d"), [(50, 5), (256, 32), (1, 1)])
def test_roundtrip_preserves_header_and_rows(n: int, d: int) -> None:
    # Prepare
    frame = make_frame(n, d, seed=n, chunk=2, n_chunks=3, round=7, step_start=2**40)
    # Execute
    decoded = decode_frame(encode_frame(frame))
    # Assert
    assert decoded.version == FORMAT_VERSION
    assert decoded.context == frame.context and decoded.source == frame.source
    assert decoded.round == 7 and decoded.step_start == 2**40
    assert decoded.model_version == frame.model_version
    assert decoded.chunk == 2 and decoded.n_chunks == 3
    assert decoded.embeddings.dtype == np.float32
    assert decoded.embeddings.shape == (n, d)
    assert decoded.step_stop == 2**40 + n
    if d > 1:
        assert row_cosine(decoded.embeddings, frame.embeddings).min() >= 0.9999
    q, scale = quantize_int8(frame.embeddings)
    np.testing.assert_array_equal(decoded.embeddings, dequantize_int8(q, scale))


def test_roundtrip_unicode_names_and_zero_rows() -> None:
    emb = np.zeros((3, 4), dtype=np.float32)
    emb[1] = [1.0, -1.0, 0.5, 0.0]
    frame = make_frame(embeddings=emb, context="küche-ü", source="ß" * 128)
    decoded = decode_frame(encode_frame(frame))
    assert decoded.context == "küche-ü" and decoded.source == "ß" * 128
    assert (decoded.embeddings[[0, 2]] == 0).all()
    np.testing.assert_allclose(decoded.embeddings[1], emb[1], atol=1e-2)


def test_encoded_50x5_is_much_smaller_than_float32_msgpack() -> None:
    frame = make_frame(50, 5)
    encoded = encode_frame(frame)
    as_floats = pack(frame.embeddings.astype(np.float64).tolist())
    assert len(encoded) < 600
    assert len(encoded) < len(as_floats) / 3


def test_raw_map_layout() -> None:
    frame = make_frame(50, 5)
    doc = raw_map(encode_frame(frame))
    assert set(doc) == {"v", "ctx", "src", "rnd", "s0", "n", "d", "mv", "ck", "nck", "z", "p"}
    assert doc["v"] == 1 and doc["n"] == 50 and doc["d"] == 5
    assert doc["z"] is False
    payload = doc["p"]
    assert isinstance(payload, bytes) and len(payload) == 50 * 5 + 4 * 50
    q, scale = quantize_int8(frame.embeddings)
    assert payload[:250] == q.tobytes()
    np.testing.assert_array_equal(np.frombuffer(payload[250:], dtype="<f4"), scale)


def test_compression_only_above_threshold() -> None:
    # Highly redundant rows compress well, so only the threshold decides.
    emb = np.tile(np.linspace(-1, 1, 32, dtype=np.float32), (256, 1))
    frame = make_frame(embeddings=emb)
    payload_len = 256 * 32 + 4 * 256

    below = raw_map(encode_frame(frame, compress_threshold=payload_len))
    above = raw_map(encode_frame(frame, compress_threshold=payload_len - 1))

    assert below["z"] is False and len(below["p"]) == payload_len
    assert above["z"] is True and len(above["p"]) < payload_len
    assert zstandard.frame_content_size(above["p"]) == payload_len
    np.testing.assert_array_equal(
        decode_frame(pack(above)).embeddings, decode_frame(pack(below)).embeddings
    )


def test_small_frames_are_not_compressed_by_default() -> None:
    assert raw_map(encode_frame(make_frame(50, 5)))["z"] is False


def test_incompressible_payload_is_left_uncompressed() -> None:
    # Random int8 data gains nothing from zstd: the flag must stay false.
    frame = make_frame(256, 32, seed=3)
    doc = raw_map(encode_frame(frame, compress_threshold=0))
    expected = 256 * 32 + 4 * 256
    if doc["z"]:
        assert len(doc["p"]) < expected
    else:
        assert len(doc["p"]) == expected
    tiny = raw_map(encode_frame(make_frame(1, 1), compress_threshold=0))
    assert tiny["z"] is False and len(tiny["p"]) == 5


@pytest.mark.parametrize("kwargs", [{"compress_threshold": -1}, {"level": 0}, {"level": 23}])
def test_encode_rejects_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        encode_frame(make_frame(), **kwargs)


def test_nan_input_to_encode_raises_value_error() -> None:
    emb = np.ones((5, 3), dtype=np.float32)
    emb[2, 1] = np.nan
    with pytest.raises(ValueError):
        encode_frame(make_frame(embeddings=emb))
    # Even a frame whose array was corrupted after validation is refused.
    frame = make_frame()
    object.__setattr__(frame, "embeddings", emb)
    with pytest.raises(ValueError):
        encode_frame(frame)


# --------------------------------------------------------------------------- hostile frames


def good_doc(n: int = 50, d: int = 5) -> dict[str, Any]:
    return raw_map(encode_frame(make_frame(n, d)))


def test_frame_error_is_an_osml_error() -> None:
    assert issubclass(FrameError, OsmlError)


def test_truncated_frames() -> None:
    data = encode_frame(make_frame())
    for cut in (0, 1, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(FrameError):
            decode_frame(data[:cut])


@pytest.mark.parametrize("seed", range(20))
def test_random_garbage(seed: int) -> None:
    rng = np.random.default_rng(seed)
    garbage = rng.integers(0, 256, size=int(rng.integers(1, 2000)), dtype=np.uint8).tobytes()
    with pytest.raises(FrameError):
        decode_frame(garbage)


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # reserved msgpack byte
        pack(good_doc()) + b"\x00",  # trailing data
        pack(list(good_doc().values())),  # a list instead of a map
        pack(7),
        pack({1: 2}),  # non-string key
        pack({"v": 1, "ctx": "x" * 600}),  # string over the length limit
        pack([0] * 100),  # array over the length limit
        pack({f"k{i}": i for i in range(100)}),  # map over the length limit
    ],
)
def test_malformed_msgpack(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(data)


@pytest.mark.parametrize("data", ["text", None, 12, memoryview(b"ab")])
def test_non_bytes_input(data: Any) -> None:
    with pytest.raises(FrameError, match="must be bytes"):
        decode_frame(data)


def test_bytearray_input_is_accepted() -> None:
    frame = make_frame()
    assert decode_frame(bytearray(encode_frame(frame))).round == frame.round


@pytest.mark.parametrize("key", sorted(good_doc()))
def test_missing_key(key: str) -> None:
    doc = good_doc()
    del doc[key]
    with pytest.raises(FrameError, match="version" if key == "v" else "missing"):
        decode_frame(pack(doc))


def test_extra_unknown_key() -> None:
    doc = good_doc()
    doc["extra"] = 1
    with pytest.raises(FrameError, match="unknown keys"):
        decode_frame(pack(doc))


def test_bytes_key_is_unknown() -> None:
    doc: dict[Any, Any] = good_doc()
    doc[b"rnd"] = 1
    with pytest.raises(FrameError, match="unknown keys"):
        decode_frame(pack(doc))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rnd", "12"),
        ("rnd", True),
        ("rnd", False),
        ("rnd", 1.0),
        ("rnd", None),
        ("v", True),
        ("v", "1"),
        ("n", True),
        ("s0", [1]),
        ("ctx", 5),
        ("ctx", b"ctx-a"),
        ("src", None),
        ("z", 0),
        ("z", "false"),
        ("p", "text"),
        ("p", [1, 2]),
        ("mv", msgpack.ExtType(5, b"x")),
        ("ck", msgpack.Timestamp(1)),
    ],
)
def test_wrong_types(key: str, value: Any) -> None:
    doc = good_doc()
    doc[key] = value
    with pytest.raises(FrameError, match=r"must be|version"):
        decode_frame(pack(doc))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rnd", -1),
        ("s0", -5),
        ("mv", 2**64 - 1),
        ("ck", 1),  # chunk 1 of 1
        ("nck", 0),
        ("ctx", ""),
        ("ctx", "a/b"),
        ("src", "+"),
        ("src", "#"),
        ("src", "x" * 129),
    ],
)
def test_invalid_header_values(key: str, value: Any) -> None:
    doc = good_doc()
    doc[key] = value
    with pytest.raises(FrameError, match="invalid frame"):
        decode_frame(pack(doc))


@pytest.mark.parametrize("version", [0, 2, 999, -1])
def test_unsupported_version(version: int) -> None:
    doc = good_doc()
    doc["v"] = version
    with pytest.raises(FrameError, match="unsupported frame version"):
        decode_frame(pack(doc))


@pytest.mark.parametrize(("n", "d"), [(49, 5), (51, 5), (50, 4), (50, 6), (10, 25)])
def test_shape_mismatch_with_payload(n: int, d: int) -> None:
    doc = good_doc()
    doc["n"], doc["d"] = n, d
    with pytest.raises(FrameError, match="expected"):
        decode_frame(pack(doc))


def test_payload_length_mismatch() -> None:
    doc = good_doc()
    doc["p"] = doc["p"][:-1]
    with pytest.raises(FrameError, match="expected"):
        decode_frame(pack(doc))


def test_compressed_payload_with_wrong_shape() -> None:
    emb = np.tile(np.linspace(-1, 1, 32, dtype=np.float32), (256, 1))
    doc = raw_map(encode_frame(make_frame(embeddings=emb), compress_threshold=0))
    assert doc["z"] is True
    doc["n"] = 255
    with pytest.raises(FrameError, match="declares"):
        decode_frame(pack(doc))


@pytest.mark.parametrize(
    ("key", "value", "kwargs"),
    [
        ("n", 0, {}),
        ("d", 0, {}),
        ("n", 65537, {}),
        ("d", 4097, {}),
        ("n", 2**40, {}),
        ("n", 51, {"max_rows": 50}),
        ("d", 6, {"max_dim": 5}),
    ],
)
def test_out_of_bounds_shape_is_rejected_before_decompression(
    monkeypatch: pytest.MonkeyPatch, key: str, value: int, kwargs: dict[str, Any]
) -> None:
    def forbidden(*args: Any, **kw: Any) -> None:
        raise AssertionError("decompressor must not be created")

    monkeypatch.setattr(zstandard, "ZstdDecompressor", forbidden)
    doc = good_doc()
    doc[key] = value
    doc["z"] = True
    with pytest.raises(FrameError, match="outside"):
        decode_frame(pack(doc), **kwargs)


def test_payload_size_bounded_by_max_frame_bytes_before_decompression(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def forbidden(*args: Any, **kw: Any) -> None:
        raise AssertionError("decompressor must not be created")

    monkeypatch.setattr(zstandard, "ZstdDecompressor", forbidden)
    doc = good_doc()
    doc["n"], doc["d"], doc["z"] = 60000, 4000, True  # within max_rows/max_dim, 240 MB payload
    with pytest.raises(FrameError, match="payload would be"):
        decode_frame(pack(doc))
    doc["n"], doc["d"] = 50, 5  # 450 bytes
    with pytest.raises(FrameError, match="payload would be"):
        decode_frame(pack(doc), max_payload_bytes=449)


def zstd_bomb(size: int, *, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(
        b"\x00" * size
    )


def test_zstd_bomb_declaring_large_size() -> None:
    doc = good_doc()  # expects 450 bytes
    doc["z"] = True
    doc["p"] = zstd_bomb(100_000_000)
    assert len(doc["p"]) < 10_000
    with pytest.raises(FrameError, match="declares 100000000 bytes"):
        decode_frame(pack(doc))


def test_zstd_bomb_without_declared_size() -> None:
    doc = good_doc()
    doc["z"] = True
    doc["p"] = zstd_bomb(10_000_000, content_size=False)
    with pytest.raises(FrameError, match="does not declare"):
        decode_frame(pack(doc))


def test_zstd_frame_lying_about_its_size() -> None:
    # Prepare: a single-segment frame of 4500 bytes whose 2-byte content size field is patched to
    # 450 (the field stores size - 256), so the header passes but the data expands further.
    payload = bytearray(zstd_bomb(4500))
    descriptor = payload[4]
    assert descriptor >> 6 == 1 and descriptor & 0x20  # 2-byte size field, single segment
    payload[5:7] = (450 - 256).to_bytes(2, "little")
    assert zstandard.frame_content_size(bytes(payload)) == 450
    doc = good_doc()
    doc["z"], doc["p"] = True, bytes(payload)
    # Execute / Assert
    with pytest.raises(FrameError, match="decompression failed"):
        decode_frame(pack(doc))


def test_zstd_trailing_data_and_second_frame() -> None:
    good = raw_map(encode_frame(make_frame(50, 5)))["p"]
    compressed = zstandard.ZstdCompressor(level=3).compress(good)
    for payload in (compressed + b"junk", compressed + compressed):
        doc = good_doc()
        doc["z"], doc["p"] = True, payload
        with pytest.raises(FrameError):
            decode_frame(pack(doc))
    doc = good_doc()
    doc["z"], doc["p"] = True, compressed
    assert decode_frame(pack(doc)).n_steps == 50


@pytest.mark.parametrize("payload", [b"", b"\x00" * 450, os.urandom(450)])
def test_compressed_flag_on_non_zstd_payload(payload: bytes) -> None:
    doc = good_doc()
    doc["z"], doc["p"] = True, payload
    with pytest.raises(FrameError, match="zstd"):
        decode_frame(pack(doc))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1.0, 3e38])
def test_bad_scales(bad: float) -> None:
    doc = good_doc()
    payload = bytearray(doc["p"])
    scales = np.frombuffer(bytes(payload[250:]), dtype="<f4").copy()
    scales[7] = bad
    payload[250:] = scales.astype("<f4").tobytes()
    doc["p"] = bytes(payload)
    with pytest.raises(FrameError, match=r"scales|overflow"):
        decode_frame(pack(doc))


def test_oversize_raw_frame_is_rejected_before_unpacking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def forbidden(*args: Any, **kw: Any) -> None:
        raise AssertionError("msgpack must not be called")

    data = encode_frame(make_frame(256, 32))
    monkeypatch.setattr(msgpack, "unpackb", forbidden)
    with pytest.raises(FrameError, match="above the limit"):
        decode_frame(data, max_frame_bytes=len(data) - 1)
    with pytest.raises(FrameError, match="above the limit"):
        decode_frame(b"\x00" * ((1 << 20) + 1))


def test_max_frame_bytes_exactly_fits() -> None:
    data = encode_frame(make_frame(256, 32))
    assert decode_frame(data, max_frame_bytes=len(data)).n_steps == 256
