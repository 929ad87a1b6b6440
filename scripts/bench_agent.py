#!/usr/bin/env python3
"""Measure what an osml agent costs on this machine; print markdown tables.

    python scripts/bench_agent.py                      # every section
    python scripts/bench_agent.py --only exchange      # one section (repeat --only for several)

Sections
--------
frames     Bytes per embedding frame for 50x5, 891x5 (one paper round) and 256x32 matrices:
           raw float32, msgpack of float lists (float64 and use_single_float), and the osml frame
           (int8 + one float32 scale per row, zstd above the codec's threshold); the ratio to
           float32, the row cosine between original and decoded rows, and encode/decode time.
rss        Peak RSS of an agent-like child process: it imports what ``osml agent`` imports
           (osml.agent.runtime -> onnxruntime, paho via osml.net.transport, numpy, msgpack, zstandard; not
           torch), loads the mlp and gru ONNX encoders, encodes 900 windows with each,
           encodes/decodes frames and sends them through a private Mosquitto. Reported: the
           child's ru_maxrss from os.wait4 (the child is started by a tiny launcher, because
           Linux carries a forking parent's RSS into the child's ru_maxrss) and its own VmHWM,
           plus whether 'torch' was in the child's sys.modules. Two reference rows: a bare
           interpreter and the same agent child that also imports torch.
inference  Median time per call, onnxruntime (1 thread) vs torch eager (1 thread, no_grad), of
           the same weights (build_encoder + build_onnx), for mlp, gru and conv on windows of
           10x1 and 10x2, batch 1 and batch 900.
exchange   Time of one exchange round on loopback through a private Mosquitto: every agent
           publishes one QoS 1 frame (--payload bytes, default 900) to each neighbour's inbox
           osml/<ctx>/<nb>/in/<me>; the round ends when every agent has received all its
           neighbours' frames. Each agent is one osml.net.transport.Transport (its own paho loop
           thread) plus one agent thread that publishes and then reads its inbox. Agents are
           grouped into worker processes (column "procs"); the driver starts a round by writing
           "go" to every worker and the round time is the latest completion time (CLOCK_MONOTONIC,
           shared by all processes) minus the time of the first "go". Run once with the broker's
           ``set_tcp_nodelay true`` (as MosquittoProcess writes it) and once without it; the
           clients always set TCP_NODELAY (Transport does).

Needs torch and onnx only for building the models and for the inference section, and the
``mosquitto`` binary for rss and exchange. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SECTIONS = ("frames", "rss", "inference", "exchange")
CONTEXT = "bench"
WINDOW, EMB = 10, 5


# --------------------------------------------------------------------------- helpers


def _median_us(samples: list[float]) -> float:
    return 1e6 * statistics.median(samples)


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("onnxruntime", "torch", "paho-mqtt", "numpy", "msgpack", "zstandard", "onnx"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    from osml.net.broker import find_mosquitto

    binary = find_mosquitto()
    mosq = "not installed"
    if binary:
        res = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False)
        first = (res.stdout or res.stderr).splitlines()
        mosq = first[0].replace("mosquitto version ", "") if first else "unknown"
    out["mosquitto"] = mosq
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_machine() -> None:
    v = _versions()
    print("## Machine\n")
    print(
        f"- nproc: {os.cpu_count()}, CPU: {_cpu_model()}, {platform.system()} {platform.release()}"
    )
    print("- " + ", ".join(f"{k} {val}" for k, val in v.items()))
    print(f"- {_load()}")
    print()


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


# --------------------------------------------------------------------------- frames


def bench_frames(repeat: int) -> None:
    import msgpack

    from osml.wire.codec import Frame, decode_frame, encode_frame

    rng = np.random.default_rng(0)
    rows = []
    for n, d in ((50, 5), (891, 5), (256, 32)):
        for kind in ("gaussian", "random walk"):
            x = rng.standard_normal((n, d))
            if kind == "random walk":  # consecutive steps close to each other, like a slow series
                x = np.cumsum(0.1 * x, axis=0) + rng.standard_normal(d)
            x = x.astype(np.float32)
            raw = x.nbytes
            mp64 = len(msgpack.packb(x.tolist()))
            mp32 = len(msgpack.packb(x.tolist(), use_single_float=True))
            frame = Frame(
                context=CONTEXT,
                source="agent-01",
                round=7,
                step_start=0,
                model_version=3,
                embeddings=x,
            )
            data = encode_frame(frame)
            compressed = bool(msgpack.unpackb(data)["z"])
            plain = len(encode_frame(frame, compress_threshold=1 << 30))
            back = decode_frame(data).embeddings
            cos = np.sum(x * back, axis=1) / (
                np.linalg.norm(x, axis=1) * np.linalg.norm(back, axis=1)
            )
            enc_t, dec_t = [], []
            for _ in range(repeat):
                t0 = time.perf_counter()
                data = encode_frame(frame)
                t1 = time.perf_counter()
                decode_frame(data)
                t2 = time.perf_counter()
                enc_t.append(t1 - t0)
                dec_t.append(t2 - t1)
            rows.append(
                [
                    f"{n}x{d}",
                    kind,
                    raw,
                    mp64,
                    mp32,
                    plain,
                    len(data),
                    "yes" if compressed else "no",
                    f"{len(data) / raw:.3f}",
                    f"{cos.min():.6f}",
                    f"{cos.mean():.6f}",
                    f"{_median_us(enc_t):.0f}",
                    f"{_median_us(dec_t):.0f}",
                ]
            )
    print("## Frames\n")
    print(
        _table(
            [
                "matrix",
                "data",
                "float32 raw (B)",
                "msgpack float64 lists (B)",
                "msgpack float32 lists (B)",
                "osml frame without zstd (B)",
                "osml frame (B)",
                "zstd used",
                "osml / float32",
                "min row cosine",
                "mean row cosine",
                "encode (µs)",
                "decode (µs)",
            ],
            rows,
        )
    )
    print(
        f"\nEncode/decode: median of {repeat} calls of encode_frame / decode_frame (default "
        "compress_threshold=1024, zstd level 3). Data: float32 standard normal, or a random walk "
        "along the steps (cumsum of N(0, 0.1^2) steps plus a random offset).\n"
    )


# --------------------------------------------------------------------------- model building


def build_models(out_dir: Path, n_features: int = 1) -> None:
    """Write mlp/gru/conv ONNX encoders (+cards) built from build_encoder's weights. Uses torch."""
    from osml.agent.modelcard import ModelCard, sha256_hex, write_model
    from osml.trainer.encoders import ARCHITECTURES, build_encoder
    from osml.trainer.export import build_onnx

    for arch in ARCHITECTURES:
        enc = build_encoder(arch, WINDOW, n_features, EMB, seed=0).eval()
        model = build_onnx(enc)
        card = ModelCard(
            version=1,
            architecture=arch,
            window=WINDOW,
            n_features=n_features,
            embedding_dim=EMB,
            sha256=sha256_hex(model),
            agent="bench",
            context=CONTEXT,
        )
        write_model(out_dir / f"{arch}.onnx", model, card)


# --------------------------------------------------------------------------- rss


def _vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def rss_child(model_dir: str, url: str, with_torch: bool) -> None:
    """The measured process: what `osml agent` does in one round, minus the learner and trainer."""
    t0 = time.perf_counter()
    if with_torch:
        import torch  # noqa: F401
    import msgpack  # noqa: F401
    import onnxruntime  # noqa: F401
    import zstandard  # noqa: F401

    import osml.agent.runtime  # noqa: F401  (what `osml agent` imports: codec, inference, transport, ...)
    from osml.agent.inference import OnnxEncoder
    from osml.net.transport import BrokerSettings, Transport
    from osml.wire import topics
    from osml.wire.codec import Frame, decode_frame, encode_frame

    t_import = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    frames: list[bytes] = []
    for arch in ("mlp", "gru"):
        enc = OnnxEncoder.load(Path(model_dir) / f"{arch}.onnx", threads=1)
        series = np.cumsum(rng.standard_normal(900 + WINDOW - 1)).astype(np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(series, WINDOW)[:, :, None]
        emb = enc.encode(windows)
        assert emb.shape == (900, EMB)
        data = encode_frame(
            Frame(
                context=CONTEXT,
                source="me",
                round=1,
                step_start=0,
                model_version=1,
                embeddings=emb[:891],
            )
        )
        assert decode_frame(data).n_steps == 891
        frames.append(data)
    tr = Transport(
        BrokerSettings(url=url),
        "rss-child",
        subscriptions=[topics.inbox_filter(CONTEXT, "me")],
        persistent=False,
    )
    tr.connect()
    try:
        for i, data in enumerate(frames):
            tr.publish(topics.inbox(CONTEXT, "me", f"nb{i}"), data)
        got = 0
        while got < len(frames):
            msg = tr.get(timeout=10)
            if msg is None:
                raise SystemExit("rss child: frames did not come back from the broker")
            decode_frame(msg.payload)
            got += 1
    finally:
        tr.close()
    print(
        json.dumps(
            {
                "torch_loaded": "torch" in sys.modules,
                "onnxruntime_loaded": "onnxruntime" in sys.modules,
                "paho_loaded": "paho.mqtt.client" in sys.modules,
                "vmhwm_kb": _vm_hwm_kb(),
                "import_s": t_import,
                "total_s": time.perf_counter() - t0,
                "frame_bytes": len(frames[0]),
            }
        )
    )


# A tiny launcher: the measured child is forked from it (~10 MB), not from this script.
_LAUNCHER = r"""
import json, os, sys, time
argv = sys.argv[1:]
r, w = os.pipe()
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.dup2(w, 1)
    os.execv(argv[0], argv)
os.close(w)
out = b""
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    out += chunk
_, status, ru = os.wait4(pid, 0)
print(json.dumps({"status": os.waitstatus_to_exitcode(status), "ru_maxrss_kb": ru.ru_maxrss,
                  "wall_s": time.perf_counter() - t0, "stdout": out.decode(errors="replace")}))
"""


def _launch(argv: list[str]) -> dict:
    res = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if res.returncode != 0:
        raise RuntimeError(f"launcher failed: {res.stderr}")
    out = json.loads(res.stdout)
    if out["status"] != 0:
        raise RuntimeError(f"measured child {argv} exited with {out['status']}")
    return out


def bench_rss(repeat: int) -> None:
    from osml.net.broker import MosquittoProcess

    me = str(Path(__file__).resolve())
    rows = []
    with tempfile.TemporaryDirectory(prefix="osml-bench-rss-") as tmp:
        model_dir = Path(tmp) / "models"
        # Build the models in a separate process so that torch never enters this one.
        subprocess.run([sys.executable, me, "--_build-models", str(model_dir)], check=True)
        with MosquittoProcess(Path(tmp) / "broker") as broker:
            base = [_launch([sys.executable, "-c", "pass"]) for _ in range(repeat)]
            rows.append(
                [
                    "bare `python -c pass`",
                    f"{np.median([b['ru_maxrss_kb'] for b in base]) / 1024:.1f}",
                    "-",
                    "-",
                    "-",
                    f"{np.median([b['wall_s'] for b in base]):.2f}",
                ]
            )
            for label, extra in (
                ("agent-like (mlp + gru, 900 windows, frames, MQTT)", []),
                ("same, plus `import torch`", ["--_with-torch"]),
            ):
                runs = []
                for _ in range(repeat):
                    out = _launch(
                        [sys.executable, me, "--_rss-child", str(model_dir), broker.url, *extra]
                    )
                    child = json.loads(out["stdout"].strip().splitlines()[-1])
                    runs.append((out, child))
                torch_loaded = {c["torch_loaded"] for _, c in runs}
                rows.append(
                    [
                        label,
                        f"{np.median([o['ru_maxrss_kb'] for o, _ in runs]) / 1024:.1f}",
                        f"{np.median([c['vmhwm_kb'] for _, c in runs]) / 1024:.1f}",
                        "yes"
                        if torch_loaded == {True}
                        else "no"
                        if torch_loaded == {False}
                        else "mixed",
                        f"{np.median([c['import_s'] for _, c in runs]):.2f}",
                        f"{np.median([o['wall_s'] for o, _ in runs]):.2f}",
                    ]
                )
    print("## Peak RSS of an agent-like process\n")
    print(
        _table(
            [
                "process",
                "ru_maxrss via os.wait4 (MB)",
                "child's own VmHWM (MB)",
                "'torch' in sys.modules",
                "imports (s)",
                "wall incl. startup (s)",
            ],
            rows,
        )
    )
    print(
        f"\nMedian of {repeat} runs each; MB = 1024 kB. The agent-like child loads mlp and gru ONNX encoders "
        f"(window {WINDOW}x1, embedding {EMB}), encodes 900 windows with each, encodes an 891x5 frame per "
        "model, sends both to its own inbox through a private Mosquitto, receives and decodes them.\n"
    )


# --------------------------------------------------------------------------- inference


def _time_calls(fn, calls: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def bench_inference(calls: int) -> None:
    import onnxruntime as ort
    import torch

    from osml.trainer.encoders import build_encoder
    from osml.trainer.export import INPUT, OUTPUT, build_onnx

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    rng = np.random.default_rng(0)
    rows = []
    for arch in ("mlp", "gru", "conv"):
        for nf in (1, 2):
            enc = build_encoder(arch, WINDOW, nf, EMB, seed=0).eval()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(
                build_onnx(enc), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            for batch in (1, 900):
                x = rng.standard_normal((batch, WINDOW, nf)).astype(np.float32)
                xt = torch.from_numpy(x)
                n = calls if batch == 1 else max(calls // 20, 20)

                def run_ort(sess=sess, x=x) -> np.ndarray:
                    return sess.run([OUTPUT], {INPUT: x})[0]

                def run_torch(enc=enc, xt=xt) -> torch.Tensor:
                    with torch.no_grad():
                        return enc(xt)

                t_ort = _time_calls(run_ort, n)
                t_torch = _time_calls(run_torch, n)
                diff = float(np.max(np.abs(run_ort() - run_torch().numpy())))
                rows.append(
                    [
                        arch,
                        f"{WINDOW}x{nf}",
                        batch,
                        f"{1e6 * t_ort:.1f}",
                        f"{1e6 * t_torch:.1f}",
                        f"{t_torch / t_ort:.1f}",
                        f"{1e6 * t_ort / batch:.2f}",
                        f"{1e6 * t_torch / batch:.2f}",
                        f"{diff:.1e}",
                    ]
                )
    print("## Inference, one thread\n")
    print(
        _table(
            [
                "encoder",
                "window",
                "batch",
                "onnxruntime (µs/call)",
                "torch eager (µs/call)",
                "torch / ort",
                "ort (µs/window)",
                "torch (µs/window)",
                "max abs diff",
            ],
            rows,
        )
    )
    print(
        f"\nMedian of {calls} calls (batch 1) or {max(calls // 20, 20)} calls (batch 900), after 20 warm-up "
        f"calls; embedding {EMB}; default widths (gru hidden 32, mlp hidden 128, conv 24 channels); "
        "torch.set_num_threads(1), torch.no_grad(); onnxruntime CPUExecutionProvider, intra_op and "
        "inter_op threads 1.\n"
    )


# --------------------------------------------------------------------------- exchange


def exchange_worker() -> None:
    """One worker process: several agents, each a Transport plus an agent thread.

    Protocol on stdin/stdout, one line each: a JSON spec in; "ready" out; then "go R" in and
    "done R T" out (T = CLOCK_MONOTONIC time the last of this worker's agents completed round R),
    or "fail R why"; "stop" in ends it.
    """
    from osml.net.transport import BrokerSettings, Transport
    from osml.wire import topics

    spec = json.loads(sys.stdin.readline())
    settings = BrokerSettings(url=spec["url"])
    ids: list[str] = spec["agents"]
    nbrs: dict[str, list[str]] = spec["neighbours"]
    filler = os.urandom(spec["payload"] - 8)
    transports = {
        a: Transport(
            settings,
            f"{spec['tag']}-{a}",
            subscriptions=[topics.inbox_filter(CONTEXT, a)],
            persistent=False,
        )
        for a in ids
    }
    for tr in transports.values():
        tr.connect()

    cond = threading.Condition()
    state = {"round": 0, "stop": False}
    results: dict[int, list[float]] = {}
    failures: list[str] = []
    finished = threading.Event()

    def agent(aid: str) -> None:
        tr, mine = transports[aid], nbrs[aid]
        done_round = 0
        while True:
            with cond:
                cond.wait_for(lambda last=done_round: state["stop"] or state["round"] > last)
                if state["stop"]:
                    return
                rnd = state["round"]
            payload = rnd.to_bytes(8, "little") + filler
            for nb in mine:
                tr.publish(topics.inbox(CONTEXT, nb, aid), payload, qos=1)
            need = set(mine)
            deadline = time.monotonic() + 30.0
            while need:
                msg = tr.get(timeout=deadline - time.monotonic())
                if msg is None:
                    with cond:
                        failures.append(f"{aid} round {rnd}: missing {sorted(need)}")
                    break
                parsed = topics.parse_inbox(msg.topic)
                if parsed and int.from_bytes(msg.payload[:8], "little") == rnd:
                    need.discard(parsed[2])
            t = time.monotonic()
            done_round = rnd
            with cond:
                results.setdefault(rnd, []).append(t)
                if len(results[rnd]) == len(ids):
                    finished.set()

    threads = [threading.Thread(target=agent, args=(a,), daemon=True) for a in ids]
    for th in threads:
        th.start()
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "stop":
                break
            rnd = int(cmd[1])
            finished.clear()
            with cond:
                state["round"] = rnd
                cond.notify_all()
            while not finished.wait(0.5):
                with cond:
                    if failures and len(results.get(rnd, [])) + len(failures) >= len(ids):
                        break
            with cond:
                if failures:
                    print(f"fail {rnd} {failures[0]}", flush=True)
                    return
                print(f"done {rnd} {max(results[rnd]):.9f}", flush=True)
    finally:
        with cond:
            state["stop"] = True
            cond.notify_all()
        for th in threads:
            th.join(timeout=5)
        # paho's loop thread may log "Client is not connected" while close() stops it: noise here.
        logging.getLogger("osml.net.transport").setLevel(logging.CRITICAL)
        for tr in transports.values():
            tr.close()


def _broker_class(nodelay: bool):
    from osml.net.broker import MosquittoProcess

    if nodelay:
        return MosquittoProcess

    class NagleMosquitto(MosquittoProcess):
        """MosquittoProcess without its `set_tcp_nodelay true` line (Mosquitto's default: Nagle on)."""

        def _config(self) -> str:
            return "".join(
                ln
                for ln in super()._config().splitlines(keepends=True)
                if not ln.startswith("set_tcp_nodelay")
            )

    return NagleMosquitto


def _run_exchange(
    url: str, tag: str, n: int, topo: str, procs: int, rounds: int, warmup: int, payload: int
) -> list[float]:
    from osml.core.topology import neighbours

    ids = [f"a{i:03d}" for i in range(n)]
    nb = neighbours(ids, topo, seed=0)
    groups = [ids[i::procs] for i in range(procs)]
    me = str(Path(__file__).resolve())
    workers = [
        subprocess.Popen(
            [sys.executable, me, "--_exchange-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        for _ in groups
    ]
    try:
        for w, group in zip(workers, groups):
            w.stdin.write(
                json.dumps(
                    {
                        "url": url,
                        "tag": tag,
                        "agents": group,
                        "payload": payload,
                        "neighbours": {a: nb[a] for a in group},
                    }
                )
                + "\n"
            )
            w.stdin.flush()
        for w in workers:
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError(f"exchange worker {w.pid} did not start")
        times = []
        for rnd in range(1, warmup + rounds + 1):
            time.sleep(0.02)  # let PUBACKs of the previous round settle
            t_go = time.monotonic()
            for w in workers:
                w.stdin.write(f"go {rnd}\n")
                w.stdin.flush()
            t_done = []
            for w in workers:
                parts = w.stdout.readline().split(maxsplit=2)
                if len(parts) < 3 or parts[0] != "done":
                    raise RuntimeError(f"exchange worker {w.pid}: {' '.join(parts) or 'exited'}")
                t_done.append(float(parts[2]))
            if rnd > warmup:
                times.append(max(t_done) - t_go)
        for w in workers:
            w.stdin.write("stop\n")
            w.stdin.flush()
        for w in workers:
            w.wait(timeout=30)
        return times
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()


def bench_exchange(rounds: int, warmup: int, payload: int, procs_128: list[int]) -> None:
    configs: list[tuple[int, str, int]] = [(8, "full", 1), (8, "random:4", 1), (32, "random:4", 1)]
    configs += [(128, "random:4", p) for p in procs_128]
    rows = []
    with tempfile.TemporaryDirectory(prefix="osml-bench-exchange-") as tmp:
        for nodelay in (True, False):
            broker = _broker_class(nodelay)(Path(tmp) / f"broker-{int(nodelay)}")
            broker.start()
            try:
                for i, (n, topo, procs) in enumerate(configs):
                    k = n - 1 if topo == "full" else int(topo.split(":")[1])
                    t = np.array(
                        _run_exchange(broker.url, f"c{i}", n, topo, procs, rounds, warmup, payload)
                    )
                    per = -(-n // procs)
                    rows.append(
                        [
                            "on" if nodelay else "off",
                            n,
                            topo,
                            n * k,
                            f"{procs} x {per} agents ({2 * per + 1} threads each)"
                            if procs > 1
                            else f"1 x {n} agents ({2 * n + 1} threads)",
                            f"{1e3 * np.median(t):.1f}",
                            f"{1e3 * np.percentile(t, 90):.1f}",
                            f"{1e3 * t.min():.1f}",
                            f"{1e3 * t.max():.1f}",
                        ]
                    )
                    print(
                        f"exchange: nodelay={nodelay} n={n} {topo} procs={procs}: "
                        f"median {1e3 * np.median(t):.1f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                broker.stop()
    print("## Exchange round on loopback\n")
    print(
        _table(
            [
                "broker set_tcp_nodelay",
                "agents",
                "topology",
                "messages / round",
                "processes",
                "median (ms)",
                "p90 (ms)",
                "min (ms)",
                "max (ms)",
            ],
            rows,
        )
    )
    print(
        f"\n{rounds} measured rounds after {warmup} warm-up rounds, 20 ms apart; payload {payload} bytes, "
        "QoS 1, not retained, to osml/<ctx>/<nb>/in/<me>. random:4 = osml.core.topology.neighbours(seed=0). "
        "Each agent = one Transport (paho loop_start thread, client TCP_NODELAY on) + one agent thread; "
        "agents dealt round-robin to worker processes, each with a main thread that relays go/done. "
        "One Mosquitto process (single-threaded) per broker setting.\n"
    )


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable); default: all, in the order above",
    )
    ap.add_argument(
        "--frame-repeat", type=int, default=1000, help="encode/decode calls timed per frame shape"
    )
    ap.add_argument(
        "--rss-repeat", type=int, default=3, help="child processes per RSS row (median)"
    )
    ap.add_argument(
        "--calls",
        type=int,
        default=2000,
        help="timed inference calls at batch 1 (batch 900 uses calls/20, at least 20)",
    )
    ap.add_argument(
        "--rounds", type=int, default=20, help="measured exchange rounds per configuration"
    )
    ap.add_argument("--warmup", type=int, default=3, help="exchange rounds run before measuring")
    ap.add_argument(
        "--payload", type=int, default=900, help="exchange message size in bytes (>= 8)"
    )
    ap.add_argument(
        "--procs-128",
        default="1,2,4",
        help="comma-separated worker-process counts to try for 128 agents (default 1,2,4)",
    )
    ap.add_argument("--_build-models", help=argparse.SUPPRESS)
    ap.add_argument("--_rss-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_with-torch", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_exchange-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._build_models:
        build_models(Path(args._build_models))
        return
    if args._rss_child:
        rss_child(args._rss_child[0], args._rss_child[1], args._with_torch)
        return
    if args._exchange_worker:
        exchange_worker()
        return
    if args.payload < 8:
        ap.error("--payload must be at least 8 bytes (the round number)")
    procs_128 = [int(p) for p in args.procs_128.split(",") if p.strip()]

    only = args.only or list(SECTIONS)
    print_machine()
    runners = {
        "frames": lambda: bench_frames(args.frame_repeat),
        "rss": lambda: bench_rss(args.rss_repeat),
        "inference": lambda: bench_inference(args.calls),
        "exchange": lambda: bench_exchange(args.rounds, args.warmup, args.payload, procs_128),
    }
    for name in SECTIONS:  # fixed order: rss runs before inference imports torch here
        if name in only:
            start = _load()
            runners[name]()
            print(
                f"_{name}: {start} at the start, {_load().removeprefix('load average ')} at the end._\n"
            )


if __name__ == "__main__":
    main()
