"""Tests for the local trainer: ipc framing, the Unix-socket service and the agent's client."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from osml.agent.inference import OnnxEncoder
from osml.agent.modelcard import ModelCard, sha256_hex
from osml.agent.trainer_client import TrainerClient
from osml.core.anchor import context_anchor
from osml.errors import ModelError, TrainerError
from osml.wire.ipc import pack_array, recv_msg, send_msg, unpack_array

pytest.importorskip("torch", reason="torch not installed: pip install 'osml[trainer]'")

import torch

from osml.trainer.fit import EncoderTrainer
from osml.trainer.service import load_state, parse_settings, serve, state_arrays
from osml.trainer.settings import TrainerSettings

WINDOW, N_FEATURES, EMB = 8, 2, 4
CONTEXT = "ctx-trainer"
FAST = {"steps_per_round": 25, "batch_size": 64}


def series(seed: int, n: int = 240) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = np.stack([20 + 3 * np.sin(t / 7), 1000 + 50 * np.cos(t / 11)], axis=1)
    return (x + rng.standard_normal(x.shape) * [0.3, 5.0]).astype(np.float32)


def windows_of(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(
        np.lib.stride_tricks.sliding_window_view(x, WINDOW, axis=0).transpose(0, 2, 1)
    )


DATA = series(0)
WINDOWS = windows_of(DATA)
ANCHOR = context_anchor(CONTEXT, EMB, 3.0)
TARGETS = (ANCHOR + np.random.default_rng(5).standard_normal((len(WINDOWS), EMB))).astype(
    np.float32
)


def init(client: TrainerClient, agent_id: str = "a1", **overrides: Any) -> int:
    kwargs: dict[str, Any] = {
        "agent_id": agent_id,
        "context": CONTEXT,
        "architecture": "mlp",
        "window": WINDOW,
        "n_features": N_FEATURES,
        "embedding_dim": EMB,
        "seed": 7,
        "train_data": DATA,
        "anchor": ANCHOR,
        "settings": dict(FAST),
    }
    kwargs.update(overrides)
    return client.init_agent(**kwargs)


# --- a service in a background thread -----------------------------------------------------


@dataclass
class Running:
    socket_path: Path
    state_dir: Path
    stop: threading.Event
    thread: threading.Thread
    errors: list[BaseException]

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "service did not stop"
        assert not self.errors, self.errors


def start_service(socket_path: Path, state_dir: Path) -> Running:
    stop, ready, errors = threading.Event(), threading.Event(), []

    def run() -> None:
        try:
            serve(socket_path, state_dir, stop=stop, ready=ready)
        except BaseException as exc:  # noqa: BLE001 - surfaced by halt()
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="test-trainer", daemon=True)
    thread.start()
    assert ready.wait(10), "service did not come up"
    assert not errors, errors
    return Running(socket_path, state_dir, stop, thread, errors)


@pytest.fixture
def tmp_short() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="osml", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def service(tmp_short: Path) -> Iterator[Running]:
    running = start_service(tmp_short / "t.sock", tmp_short / "state")
    try:
        yield running
    finally:
        running.halt()


@pytest.fixture
def client(service: Running) -> TrainerClient:
    return TrainerClient(service.socket_path, timeout=30)


# --- ipc ----------------------------------------------------------------------------------


def test_pack_unpack_roundtrip() -> None:
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    d = pack_array(a)
    assert d["dtype"] == "float32" and d["shape"] == [2, 3, 4]
    back = unpack_array(
        msgpack.unpackb(msgpack.packb(d, use_bin_type=True), raw=False), expect_ndim=3
    )
    assert back.dtype == np.float32 and back.flags.writeable
    np.testing.assert_array_equal(back, a.astype(np.float32))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(dtype="float64"), "dtype"),
        (lambda d: d.update(dtype="object"), "dtype"),
        (lambda d: d.update(shape=[2, 4]), "needs"),
        (lambda d: d.update(shape=[-1, 3]), "non-negative"),
        (lambda d: d.update(shape=[2, True, 3]), "non-negative"),
        (lambda d: d.update(shape="6"), "shape"),
        (lambda d: d.update(data="text"), "binary"),
        (lambda d: d.update(data=np.array([np.nan] * 6, np.float32).tobytes()), "NaN"),
        (lambda d: d.update(data=np.array([np.inf] * 6, np.float32).tobytes()), "NaN or infinite"),
        (lambda d: d.update(extra=1), "keys"),
        (lambda d: d.pop("data"), "keys"),
    ],
)
def test_unpack_array_rejects(mutate: Any, match: str) -> None:
    d = pack_array(np.ones((2, 3)))
    mutate(d)
    with pytest.raises(TrainerError, match=match):
        unpack_array(d)


def test_unpack_array_checks_ndim_and_type() -> None:
    with pytest.raises(TrainerError, match="expected 3 dimensions"):
        unpack_array(pack_array(np.ones((2, 3))), expect_ndim=3)
    with pytest.raises(TrainerError, match="map"):
        unpack_array([1, 2, 3])


def test_pack_array_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="NaN"):
        pack_array(np.array([1.0, np.nan]))


def test_send_recv_over_socketpair() -> None:
    a, b = socket.socketpair()
    with a, b:
        send_msg(a, {"op": "x", "blob": b"\x00" * 1000, "n": 3})
        assert recv_msg(b) == {"op": "x", "blob": b"\x00" * 1000, "n": 3}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "closed by peer"),
        (b"\x00\x00", "closed after 2 of 4"),
        (struct.pack(">I", 10) + b"abc", "closed after 3 of 10"),
        (struct.pack(">I", 2**31), "outside"),
        (struct.pack(">I", 0), "outside"),
        (struct.pack(">I", 1) + b"\xc1", "not valid msgpack"),  # 0xc1 is never used
        (struct.pack(">I", 3) + msgpack.packb([1, 2]), "must be a map"),
        (struct.pack(">I", 3) + b"\x81\x01\x02", "not valid msgpack"),  # int map key
    ],
)
def test_recv_msg_rejects(raw: bytes, match: str) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(raw)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(TrainerError, match=match):
            recv_msg(b, max_bytes=1 << 20)


def test_recv_msg_times_out() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(0.05)
        with pytest.raises(TrainerError, match="timed out"):
            recv_msg(b)


def test_send_msg_rejects_unpackable() -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(TrainerError, match="cannot encode"):
        send_msg(a, {"x": object()})


# --- trainer state as arrays (no socket) ---------------------------------------------------


@pytest.mark.parametrize(("arch", "objective"), [("mlp", "vc"), ("gru", "masked"), ("conv", "vc")])
def test_state_arrays_restore_an_identical_trainer(arch: str, objective: str) -> None:
    settings = TrainerSettings(
        architecture=arch, objective=objective, steps_per_round=5, batch_size=32
    )

    def fresh(seed: int) -> EncoderTrainer:
        return EncoderTrainer(
            settings, WINDOW, N_FEATURES, EMB, seed=seed, train_data=DATA, offset=ANCHOR
        )

    original = fresh(1)
    original.fit(WINDOWS, TARGETS)
    copy = fresh(2)
    assert load_state(copy, state_arrays(original))
    assert original.fit(WINDOWS, TARGETS) == copy.fit(WINDOWS, TARGETS)
    for a, b in zip(original.encoder.state_dict().values(), copy.encoder.state_dict().values()):
        assert torch.equal(a, b)


def test_load_state_refuses_another_shape() -> None:
    small = EncoderTrainer(TrainerSettings(), WINDOW, N_FEATURES, EMB, seed=1, train_data=DATA)
    other = EncoderTrainer(TrainerSettings(), WINDOW, N_FEATURES, EMB + 1, seed=1, train_data=DATA)
    before = state_arrays(other)
    assert not load_state(other, state_arrays(small))
    assert all(np.array_equal(v, state_arrays(other)[k]) for k, v in before.items())


def test_parse_settings_types() -> None:
    s = parse_settings({"learning_rate": 1, "per_dim_variance": False}, "conv")
    assert (s.learning_rate, s.per_dim_variance, s.architecture) == (1.0, False, "conv")
    with pytest.raises(TrainerError, match="per_dim_variance: must be a bool"):
        parse_settings({"per_dim_variance": 1}, "mlp")
    with pytest.raises(TrainerError, match="expected a map"):
        parse_settings([1], "mlp")


# --- the service, end to end --------------------------------------------------------------


def test_init_initial_model_train_roundtrip(client: TrainerClient) -> None:
    assert client.ping()
    assert init(client) == 0
    assert init(client) == 0  # idempotent

    model, card = client.initial_model("a1", WINDOWS, version=1)
    enc = OnnxEncoder.from_bytes(model, card)
    assert (enc.version, card.agent, card.context, card.architecture) == (1, "a1", CONTEXT, "mlp")
    assert enc.encode(WINDOWS).shape == (len(WINDOWS), EMB)

    model2, card2, losses = client.train("a1", 0, WINDOWS, TARGETS, version=2)
    enc2 = OnnxEncoder.from_bytes(model2, card2)
    assert enc2.version == 2 and enc2.encode(WINDOWS[:5]).shape == (5, EMB)
    assert set(losses) == {"align", "ssl"} and all(np.isfinite(list(losses.values())))
    assert model2 != model
    assert init(client) == 2  # the trainer reports what it holds


def test_training_reduces_alignment_loss(client: TrainerClient) -> None:
    init(client, settings={"steps_per_round": 40, "batch_size": 64})
    aligns = [client.train("a1", r, WINDOWS, TARGETS, version=r + 1)[2]["align"] for r in range(3)]
    assert aligns[2] < aligns[1] < aligns[0]


def test_two_agents_train_concurrently(client: TrainerClient) -> None:
    assert init(client, "a1", architecture="mlp") == 0
    assert init(client, "a2", architecture="conv", seed=8, train_data=series(1)) == 0
    results: dict[str, tuple[bytes, ModelCard, dict[str, float]]] = {}

    def job(agent: str) -> None:
        results[agent] = client.train(agent, 0, WINDOWS, TARGETS, version=1)

    threads = [threading.Thread(target=job, args=(a,)) for a in ("a1", "a2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(results) == {"a1", "a2"}
    for agent, arch in (("a1", "mlp"), ("a2", "conv")):
        model, card, _ = results[agent]
        assert (card.agent, card.architecture) == (agent, arch)
        assert OnnxEncoder.from_bytes(model, card).encode(WINDOWS).shape == (len(WINDOWS), EMB)


def test_restart_reloads_agent_and_continues(tmp_short: Path) -> None:
    sock, state = tmp_short / "t.sock", tmp_short / "state"
    # One steady round: the restarted trainer's round must fall, as the reference's second does.
    settings: dict[str, Any] = {"steps_per_round": 30, "batch_size": 32, "lr_steady_rounds": 1}
    first = start_service(sock, state)
    try:
        client = TrainerClient(sock, timeout=30)
        init(client, settings=settings)
        client.initial_model("a1", WINDOWS, 1)
        model2, card2, _ = client.train("a1", 0, WINDOWS, TARGETS, 2)
    finally:
        first.halt()
    assert not sock.exists()
    assert not client.ping()

    second = start_service(sock, state)
    try:
        client = TrainerClient(sock, timeout=30)
        assert init(client, settings=settings) == 2
        again, card_again = client.initial_model("a1", WINDOWS, 2)
        before = OnnxEncoder.from_bytes(model2, card2).encode(WINDOWS)
        after = OnnxEncoder.from_bytes(again, card_again).encode(WINDOWS)
        np.testing.assert_array_equal(after, before)
        model3, card3, _ = client.train("a1", 1, WINDOWS, TARGETS, 3)
    finally:
        second.halt()

    # Reference: the same agent trained for two rounds in one process, never restarted. Matching
    # it means the restarted trainer resumed weights, AdamW moments, the batch sampler and the
    # learning-rate schedule (rounds trained).
    ref = EncoderTrainer(
        TrainerSettings(architecture="mlp", **settings),
        WINDOW,
        N_FEATURES,
        EMB,
        seed=7,
        train_data=DATA,
        offset=ANCHOR,
    )
    ref.fit(WINDOWS, TARGETS)
    ref.fit(WINDOWS, TARGETS)
    with torch.no_grad():
        want = ref.encoder.eval()(torch.from_numpy(WINDOWS)).numpy()
    got = OnnxEncoder.from_bytes(model3, card3).encode(WINDOWS)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert card3.version == 3


def test_job_without_init_reloads_from_checkpoint(tmp_short: Path) -> None:
    sock, state = tmp_short / "t.sock", tmp_short / "state"
    first = start_service(sock, state)
    try:
        client = TrainerClient(sock, timeout=30)
        init(client)
        client.train("a1", 0, WINDOWS, TARGETS, 1)
    finally:
        first.halt()
    second = start_service(sock, state)
    try:
        # Same client object (the agent did not restart): the trainer reloads on the first job.
        _, card, _ = client.train("a1", 1, WINDOWS, TARGETS, 2)
        assert card.version == 2
        client._registered["ghost"] = client._registered["a1"]
        with pytest.raises(TrainerError, match="not registered; send init first"):
            client.train("ghost", 0, WINDOWS, TARGETS, 1)
    finally:
        second.halt()


def test_absent_socket_fails_fast(tmp_short: Path) -> None:
    client = TrainerClient(tmp_short / "none.sock", timeout=30)
    t0 = time.perf_counter()
    with pytest.raises(TrainerError, match="no trainer socket"):
        init(client)
    assert not client.ping()
    assert time.perf_counter() - t0 < 2


def test_stale_socket_file_refused_connection(tmp_short: Path) -> None:
    path = tmp_short / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens
    with pytest.raises(TrainerError, match="refused"):
        init(TrainerClient(path, timeout=5))
    running = start_service(path, tmp_short / "state")  # replaces the stale file
    try:
        assert TrainerClient(path).ping()
    finally:
        running.halt()


def test_second_service_on_live_socket_refused(service: Running) -> None:
    with pytest.raises(TrainerError, match="already listening"):
        serve(service.socket_path, service.state_dir, stop=threading.Event())
    assert TrainerClient(service.socket_path).ping()


def test_socket_is_private(service: Running) -> None:
    assert service.socket_path.stat().st_mode & 0o777 == 0o600


def raw_exchange(path: Path, payload: bytes) -> dict[str, Any] | None:
    """Send raw bytes; the error reply, or None if the server just closed the connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        try:
            return recv_msg(s)
        except TrainerError:
            return None


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.0\r\n\r\n",
        struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1",
        struct.pack(">I", 3) + msgpack.packb([1, 2]),
        struct.pack(">I", 100) + b"short",
        b"\x00",
    ],
)
def test_garbage_gets_error_and_server_keeps_serving(client: TrainerClient, payload: bytes) -> None:
    reply = raw_exchange(client.socket_path, payload)
    assert reply is None or (reply["ok"] is False and "bad request" in reply["error"])
    assert client.ping()


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        ({"op": "ping"}, "protocol version"),
        ({"v": 1, "op": "explode"}, "unknown op"),
        ({"v": 1, "op": "init", "agent_id": 5}, "agent_id must be a string"),
        (
            {"v": 1, "op": "init", "agent_id": "a", "context": "c", "architecture": "lstm"},
            "architecture",
        ),
        (
            {"v": 1, "op": "train", "agent_id": "a", "context": "c", "round": 0, "version": 1},
            "not registered",
        ),
        (
            {"v": 1, "op": "train", "agent_id": "a", "context": "c", "round": -1, "version": 1},
            "round",
        ),
        (
            {"v": 1, "op": "initial_model", "agent_id": "a\x07", "context": "c", "version": 1},
            "control",
        ),
        (
            {"v": 1, "op": "initial_model", "agent_id": "a/b", "context": "c", "version": 1},
            "topic level",
        ),
    ],
)
def test_bad_requests_get_error_replies(
    service: Running, request_: dict[str, Any], match: str
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(service.socket_path))
        send_msg(s, request_)
        reply = recv_msg(s)
    assert reply["ok"] is False and match in reply["error"]


def test_bad_shapes_get_error_replies(client: TrainerClient) -> None:
    init(client)
    with pytest.raises(TrainerError, match="windows must have shape"):
        client.train("a1", 0, WINDOWS[:, :4], TARGETS, 1)
    with pytest.raises(TrainerError, match="targets must have shape"):
        client.train("a1", 0, WINDOWS, TARGETS[:, :2], 1)
    with pytest.raises(TrainerError, match="anchor must have shape"):
        init(client, "a2", anchor=np.ones(3))
    with pytest.raises(TrainerError, match="windows: array holds NaN"):
        client.train("a1", 0, np.full_like(WINDOWS, np.nan), TARGETS, 1)
    assert client.train("a1", 0, WINDOWS, TARGETS, 1)[1].version == 1


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"steps_per_round": 0}, "steps_per_round: must be >= 1"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"learning_rate": "fast"}, "learning_rate: must be a float"),
        ({"steps_per_round": 1.5}, "steps_per_round: must be a int"),
        ({"objective": "magic"}, "objective: must be one of"),
        ({"architecture": "gru"}, "contradicts"),
        ({"objective": "infonce", "temperature": 0.0}, "temperature: must be > 0"),
        ({"shared_dims": EMB + 1}, "shared_dims: must be <= embedding_dim"),
    ],
)
def test_bad_settings_raise_with_message(
    client: TrainerClient, settings: dict[str, object], match: str
) -> None:
    with pytest.raises(TrainerError, match=match):
        init(client, settings=settings)
    assert init(client, "ok", settings={"learning_rate": 1}) == 0  # an int is a fine float


def test_changed_settings_keep_weights(client: TrainerClient) -> None:
    init(client)
    model, _, _ = client.train("a1", 0, WINDOWS, TARGETS, 1)
    assert init(client, settings={**FAST, "learning_rate": 1e-3}) == 1
    again, _ = client.initial_model("a1", WINDOWS, 1)
    assert again == model
    assert init(client, window=WINDOW + 1) == 0  # a new shape cannot reuse the weights


def test_trainer_killed_mid_job_raises(tmp_short: Path) -> None:
    sock = tmp_short / "k.sock"
    code = "import sys; from osml.trainer.service import serve; serve(sys.argv[1], sys.argv[2])"
    with open(tmp_short / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(sock), str(tmp_short / "state")], stderr=err
        )
    try:
        client = TrainerClient(sock, timeout=30)
        deadline = time.monotonic() + 60
        while not client.ping():
            assert proc.poll() is None, (tmp_short / "stderr.log").read_text()
            assert time.monotonic() < deadline, "trainer subprocess did not come up"
            time.sleep(0.1)
        init(client, settings={"steps_per_round": 10**6, "batch_size": 64})
        outcome: list[BaseException | None] = []

        def train() -> None:
            try:
                client.train("a1", 0, WINDOWS, TARGETS, 1)
                outcome.append(None)
            except BaseException as exc:  # handed to the test thread below
                outcome.append(exc)

        worker = threading.Thread(target=train)
        busy_from = _cpu_seconds(proc.pid)
        worker.start()
        # Kill it mid-job: once the job has burnt a second of CPU (the trainer is idle before).
        deadline = time.monotonic() + 120
        while _cpu_seconds(proc.pid) < busy_from + 1.0:
            assert worker.is_alive(), f"the job ended before the kill: {outcome}"
            assert time.monotonic() < deadline, "the trainer never started the job"
            time.sleep(0.05)
        proc.kill()
        worker.join(60)
        assert not worker.is_alive()
        assert isinstance(outcome[0], TrainerError) and "closed" in str(outcome[0]), outcome
        assert proc.wait(10) == -9
        assert not client.ping()
        with pytest.raises(TrainerError, match="refused"):
            client.train("a1", 1, WINDOWS, TARGETS, 2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, from /proc (clock ticks of 1/100 s)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the client's checks on what the trainer returns ------------------------------------------


def fake_trainer(path: Path, replies: list[dict[str, Any]]) -> threading.Thread:
    """Answers each connection with the next canned reply."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def run() -> None:
        with listener:
            for reply in replies:
                conn, _ = listener.accept()
                with conn:
                    recv_msg(conn)
                    send_msg(conn, reply)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_client_verifies_returned_model(
    tmp_short: Path, tiny_model: tuple[bytes, ModelCard]
) -> None:
    model, card = tiny_model
    ok_card = card.to_json()
    wrong_dim = ModelCard(**{**card.__dict__, "embedding_dim": EMB + 1}).to_json()
    path = tmp_short / "f.sock"
    thread = fake_trainer(
        path,
        [
            {"ok": True, "version": 0},
            {"ok": True, "model": model, "card": ok_card},
            {"ok": True, "model": model + b"x", "card": ok_card},
            {"ok": True, "model": model, "card": wrong_dim},
            {"ok": True, "model": model, "card": "{not json"},
            {"ok": True, "model": model, "card": ok_card, "losses": {"align": "low"}},
            {"ok": "yes"},
            {"ok": False, "error": "out of memory"},
        ],
    )
    client = TrainerClient(path, timeout=5)
    assert init(client) == 0
    assert client.initial_model("a1", WINDOWS, 1)[1].version == 1
    # A corrupted model reaches the agent, which verifies every model in one place before use.
    corrupted, its_card = client.initial_model("a1", WINDOWS, 1)
    with pytest.raises(ModelError, match="sha256"):
        OnnxEncoder.from_bytes(corrupted, its_card)
    with pytest.raises(ModelError, match="expected"):
        client.initial_model("a1", WINDOWS, 1)
    with pytest.raises(TrainerError, match="JSON"):
        client.initial_model("a1", WINDOWS, 1)
    with pytest.raises(TrainerError, match="losses"):
        client.train("a1", 0, WINDOWS, TARGETS, 1)
    with pytest.raises(TrainerError, match="malformed"):
        client.initial_model("a1", WINDOWS, 1)
    with pytest.raises(TrainerError, match="out of memory"):
        client.initial_model("a1", WINDOWS, 1)
    thread.join(5)


def test_client_times_out_on_silent_trainer(tmp_short: Path) -> None:
    path = tmp_short / "s.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with listener:
        listener.bind(str(path))
        listener.listen()  # accepts (in the backlog) but never answers
        t0 = time.perf_counter()
        with pytest.raises(TrainerError, match="timed out"):
            init(TrainerClient(path, timeout=0.3))
        assert time.perf_counter() - t0 < 3


def test_client_requires_init_and_short_path(tmp_short: Path) -> None:
    with pytest.raises(TrainerError, match="init_agent first"):
        TrainerClient(tmp_short / "x.sock").train("a1", 0, WINDOWS, TARGETS, 1)
    with pytest.raises(TrainerError, match="shorter path"):
        init(TrainerClient("/tmp/" + "x" * 120))
    assert not TrainerClient("/tmp/" + "x" * 120).ping()


@pytest.fixture(scope="module")
def tiny_model() -> tuple[bytes, ModelCard]:
    from osml.trainer.encoders import build_encoder
    from osml.trainer.export import export_onnx

    enc = build_encoder("mlp", WINDOW, N_FEATURES, EMB, seed=1)
    model, card, _ = export_onnx(enc, WINDOWS[:4], 1, agent="a1", context=CONTEXT)
    return model, card


def test_rescale_sets_a_registered_agents_input_scaling_afresh(client: TrainerClient) -> None:
    assert init(client) == 0
    first, _ = client.initial_model("a1", WINDOWS, 1)
    wider = (DATA * 5.0 + 3.0).astype(np.float32)

    assert init(client, train_data=wider) == 1  # a plain re-registration changes nothing
    same, _ = client.initial_model("a1", WINDOWS, 2)
    assert init(client, train_data=wider, rescale=True) == 2
    rescaled, card = client.initial_model("a1", WINDOWS, 3)

    def embed(model: bytes, version: int) -> np.ndarray:
        c = ModelCard(**{**card.__dict__, "version": version, "sha256": sha256_hex(model)})
        return OnnxEncoder.from_bytes(model, c).encode(WINDOWS)

    assert np.allclose(embed(first, 3), embed(same, 3))
    assert not np.allclose(embed(first, 3), embed(rescaled, 3))
