#!/usr/bin/env python3
"""Fuzz the agent's inbox: hostile bytes in, and nothing hostile may come out.

    python scripts/fuzz_frames.py                    # 200 000 inputs, seed 0
    python scripts/fuzz_frames.py --inputs 2000000 --seed 7 --json fuzz.json

Every input goes through :meth:`osml.wire.inbox.Inbox.offer` twice: once in an inbox without
signatures and once in one that requires them. Inputs are drawn from six generators: random
bytes; valid frames (random shapes, chunking, compression, signed or not) mutated by bit flips,
byte inserts and deletes, truncation and splicing; valid msgpack maps with fields replaced by
values of any type; zstd bombs and payloads that lie about their size; frames on the wrong topic,
from strangers, for other contexts, or replays of finished rounds; and intact valid frames (the
control: they must be kept). The run fails (exit 1) if ``offer`` ever raises, returns an unknown
reason, keeps an invalid or non-finite frame, lets a modified signed frame through, rejects an
intact valid one, or lets the inbox hold more than its byte budget. It prints inputs tried,
inputs per second, what was kept and rejected by reason, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import sys
import time
from collections import Counter

import msgpack
import numpy as np
import zstandard

from osml.wire import topics
from osml.wire.codec import Frame, encode_frame
from osml.wire.inbox import REASONS, Inbox

CTX, ME, NBS = "fuzz", "0", ("1", "2", "3")
KEY = bytes(range(32))
ROUND = 5
VALUES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    2**64 - 1,
    -(2**63),
    1.5,
    float("nan"),
    float("inf"),
    "",
    "x" * 200,
    "a/b",
    "1",
    b"",
    b"\x00" * 33,
    [],
    [1, 2],
    {},
    {"v": 1},
]
KEYS = ["v", "ctx", "src", "rnd", "s0", "n", "d", "mv", "ck", "nck", "z", "p", "sig", "zz"]


def valid(rng: random.Random, *, signed: bool) -> tuple[str, bytes, Frame]:
    src = rng.choice(NBS)
    n, d = rng.randint(1, 300), rng.choice([5, 5, 5, 3, 8])
    nck = rng.choice([1, 1, 1, 2, 4])
    emb = np.random.default_rng(rng.getrandbits(32)).normal(size=(n, d)).astype(np.float32)
    if rng.random() < 0.1:
        emb *= rng.choice([1e-30, 1e30, 0.0])
    f = Frame(
        context=CTX,
        source=src,
        round=ROUND + rng.randint(0, 3),
        step_start=rng.randint(0, 10**6),
        model_version=rng.randint(0, 9),
        embeddings=emb,
        chunk=rng.randrange(nck),
        n_chunks=nck,
    )
    data = encode_frame(
        f, compress_threshold=rng.choice([0, 1024, 10**9]), key=KEY if signed else None
    )
    return topics.inbox(CTX, ME, src), data, f


def mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 8)))
        elif op == 2 and b:
            i = rng.randrange(len(b))
            del b[i : i + rng.randint(1, 16)]
        elif op == 3:
            b = b[: rng.randrange(len(b) + 1)]
        else:
            cut = rng.randrange(len(other) + 1)
            b = b[: rng.randrange(len(b) + 1)] + bytearray(other[cut:])
    return bytes(b)


def replaced_field(rng: random.Random) -> bytes:
    _, data, _ = valid(rng, signed=rng.random() < 0.5)
    doc = msgpack.unpackb(data, raw=False)
    for _ in range(rng.randint(1, 3)):
        doc[rng.choice(KEYS)] = (
            rng.choice(VALUES) if rng.random() < 0.7 else rng.randint(-(2**64), 2**64)
        )
    try:
        out: bytes = msgpack.packb(doc, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        out = msgpack.packb({"v": 1}, use_bin_type=True)
    return out


_BOMBS: dict[tuple[int, bool], bytes] = {}


def _zeros_compressed(size: int, declared: bool) -> bytes:
    if (size, declared) not in _BOMBS:
        if declared:
            _BOMBS[size, declared] = zstandard.ZstdCompressor(write_content_size=True).compress(
                bytes(size)
            )
        else:  # a streamed frame: no content size in its header
            c = zstandard.ZstdCompressor().compressobj()
            _BOMBS[size, declared] = c.compress(bytes(size)) + c.flush()
    return _BOMBS[size, declared]


def bomb(rng: random.Random) -> bytes:
    _, data, f = valid(rng, signed=False)
    doc = msgpack.unpackb(data, raw=False)
    size = rng.choice([1 << 20, 16 << 20, 64 << 20, 256 << 20, f.n_steps * f.dim + 4 * f.n_steps])
    body = _zeros_compressed(size, rng.random() < 0.7)
    doc.update(z=True, p=body)
    if rng.random() < 0.3:
        doc.update(n=rng.randint(1, 10**6), d=rng.randint(1, 10**4))
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


def misdirected(rng: random.Random) -> tuple[str, bytes]:
    _, data, f = valid(rng, signed=rng.random() < 0.5)
    choice = rng.randrange(5)
    if choice == 0:
        return topics.inbox(CTX, ME, "9"), data  # a stranger
    if choice == 1:
        return topics.inbox(
            CTX, ME, rng.choice([n for n in NBS if n != f.source])
        ), data  # wrong src
    if choice == 2:
        return topics.inbox("other", ME, f.source), data  # another context
    if choice == 3:
        return topics.inbox(CTX, "7", f.source), data  # someone else's inbox
    old = Frame(
        context=CTX,
        source=f.source,
        round=rng.randint(0, ROUND - 1),
        step_start=0,
        model_version=0,
        embeddings=f.embeddings,
    )
    return topics.inbox(CTX, ME, f.source), encode_frame(
        old, key=KEY
    )  # a replay of a finished round


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--inputs", type=int, default=200_000, help="how many inputs to try (default 200000)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the summary here")
    args = ap.parse_args()
    logging.getLogger("osml").setLevel(
        logging.ERROR
    )  # the counters are the output, not 10^5 warnings
    rng = random.Random(args.seed)
    budget = 4 << 20
    plain = Inbox(context=CTX, me=ME, neighbours=NBS, dim=5, max_pending_bytes=budget)
    strict = Inbox(
        context=CTX,
        me=ME,
        neighbours=NBS,
        dim=5,
        keys=[KEY],
        require_signature=True,
        max_pending_bytes=budget,
    )
    kinds: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    failures: list[str] = []
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    pool = [valid(rng, signed=True)[1] for _ in range(64)]
    genuine = set(pool)
    for i in range(args.inputs):
        kind = rng.choice(["random", "mutated", "fields", "bomb", "misdirected", "intact"])
        kinds[kind] += 1
        topic = topics.inbox(CTX, ME, rng.choice(NBS))
        if kind == "random":
            data = rng.randbytes(rng.choice([0, 1, 8, 64, 512, 4096]))
        elif kind == "mutated":
            topic, good, _ = valid(rng, signed=True)
            data = mutate(rng, good, rng.choice(pool))
            if data == good or data in genuine:  # mutated back into a real signed frame
                kind = "intact"
        elif kind == "fields":
            data = replaced_field(rng)
        elif kind == "bomb":
            data = bomb(rng)
        elif kind == "misdirected":
            topic, data = misdirected(rng)
        else:
            topic, data, _ = valid(rng, signed=True)
        for name, box in (("plain", plain), ("signed", strict)):
            try:
                reason = box.offer(topic, data, ROUND)
            except Exception as exc:  # noqa: BLE001 - the property under test: nothing escapes
                failures.append(f"input {i} ({kind}): {name} inbox raised {exc!r}")
                continue
            if reason is not None and reason not in REASONS:
                failures.append(f"input {i} ({kind}): unknown reason {reason!r}")
            if reason is None:
                kept[f"{name}:{kind}"] += 1
                if name == "signed" and kind == "mutated":
                    failures.append(f"input {i}: a modified signed frame was kept")
            elif kind == "intact" and reason not in (
                "duplicate",
                "flood",
                "chunk",
                "dimension",
                "topic",
            ):
                failures.append(f"input {i}: an intact valid frame was rejected ({reason})")
            if box.pending_bytes > budget * len(NBS):
                failures.append(f"input {i}: {name} inbox holds {box.pending_bytes} bytes")
        for box in (plain, strict):
            for parts in box._chunks.values():
                for f in parts.values():
                    if not np.isfinite(f.embeddings).all() or f.dim != 5:
                        failures.append(
                            f"input {i}: kept a frame with non-finite values or dim {f.dim}"
                        )
            if rng.random() < 0.01:
                box.forget_before(ROUND + 4)  # as rounds go by; keeps duplicates from piling up
                box.forget_before(0)
        if failures:
            break
        if (i + 1) % 50_000 == 0:
            print(
                f"... {i + 1} inputs, {(i + 1) / (time.perf_counter() - t0):.0f}/s",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - t0
    tried = sum(kinds.values())
    summary = {
        "inputs": tried,
        "offers": 2 * tried,
        "seconds": round(elapsed, 1),
        "inputs_per_s": round(tried / elapsed),
        "by_generator": dict(kinds),
        "kept": dict(kept),
        "rejected_plain": dict(plain.rejected.most_common()),
        "rejected_signed": dict(strict.rejected.most_common()),
        "peak_rss_mb": {
            "start": round(rss0 / 1024, 1),
            "end": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
        "failures": failures[:20],
        "result": "FAIL" if failures else "PASS",
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
