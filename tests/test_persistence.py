"""Durability on disk: atomic writes, the model pair's commit point, torn rounds.jsonl lines, and
a writer SIGKILLed at random moments that must always leave a state and a model that load.

No broker and no torch: the models are tiny ONNX graphs built with ``onnx.helper``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from osml.agent import modelcard
from osml.agent.inference import OnnxEncoder
from osml.agent.modelcard import (
    ModelCard,
    card_path,
    read_card,
    read_model,
    sha256_hex,
    staged_path,
    write_model,
)
from osml.agent.records import RoundRecord
from osml.agent.state import AgentState, append_round, load_state, read_rounds, save_state
from osml.errors import ConfigError, ModelError
from osml.files import write_atomic

WINDOW, N_FEATURES, EMB = 8, 3, 16


def tiny_model(seed: int) -> bytes:
    """A valid encoder graph: (batch, WINDOW, N_FEATURES) -> Flatten -> MatMul -> (batch, EMB)."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = (
        np.random.default_rng(seed).standard_normal((WINDOW * N_FEATURES, EMB)).astype(np.float32)
    )
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["windows"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["embeddings"]),
        ],
        "tiny",
        [
            helper.make_tensor_value_info(
                "windows", TensorProto.FLOAT, ["batch", WINDOW, N_FEATURES]
            )
        ],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", EMB])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by older onnxruntime builds too
    return bytes(model.SerializeToString())


def card_for(model: bytes, version: int) -> ModelCard:
    return ModelCard(
        version=version,
        architecture="tiny",
        window=WINDOW,
        n_features=N_FEATURES,
        embedding_dim=EMB,
        sha256=sha256_hex(model),
    )


def extra_files(directory: Path, *expected: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in expected)


@pytest.fixture(scope="module")
def models() -> list[bytes]:
    return [tiny_model(seed) for seed in range(3)]


class Crash(Exception):
    """Stands in for a SIGKILL at one point of a write."""


# --- write_atomic -------------------------------------------------------------------------------


def test_write_atomic_fsyncs_the_file_and_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)

    write_atomic(tmp_path / "blob.bin", b"data")

    assert synced == ["file", "dir"]
    assert (tmp_path / "blob.bin").read_bytes() == b"data"


def test_write_atomic_killed_before_the_rename_keeps_the_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "blob.bin"
    write_atomic(target, b"old")

    def crash(src: object, dst: object) -> None:
        raise Crash

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(Crash):
        write_atomic(target, b"new")

    assert target.read_bytes() == b"old"


# --- write_model: the card is the commit point -----------------------------------------------


def test_write_model_leaves_just_the_pair(tmp_path: Path, models: list[bytes]) -> None:
    path = tmp_path / "model.onnx"

    for version, model in enumerate(models, 1):
        write_model(path, model, card_for(model, version))

    assert extra_files(tmp_path) == ["model.card.json", "model.onnx"]
    assert OnnxEncoder.load(path).version == 3


def test_killed_before_the_commit_loads_the_previous_model(
    tmp_path: Path, models: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.onnx"
    write_model(path, models[0], card_for(models[0], 1))
    real_write = write_atomic  # the function modelcard calls, before it is patched

    def crash_on_card(target: Path, data: bytes) -> None:
        if Path(target) == card_path(path):
            raise Crash
        real_write(target, data)

    monkeypatch.setattr(modelcard, "write_atomic", crash_on_card)
    with pytest.raises(Crash):
        write_model(path, models[1], card_for(models[1], 2))
    monkeypatch.undo()

    enc = OnnxEncoder.load(path)
    assert enc.version == 1 and enc.model_bytes == models[0]
    assert staged_path(path, sha256_hex(models[1])).exists()  # the new bytes, not committed


def test_killed_after_the_commit_loads_the_new_model_from_the_staged_file(
    tmp_path: Path,
    models: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "model.onnx"
    write_model(path, models[0], card_for(models[0], 1))
    real_replace = os.replace

    def crash_on_final_rename(src: str, dst: str) -> None:
        if Path(dst) == path:
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_final_rename)
    with pytest.raises(Crash):
        write_model(path, models[1], card_for(models[1], 2))
    monkeypatch.undo()

    assert path.read_bytes() == models[0]  # the old file is still in place ...
    enc = OnnxEncoder.load(path)  # ... but the committed card names the staged one
    assert enc.version == 2 and enc.model_bytes == models[1]


def test_first_install_killed_after_the_commit_has_no_model_file_yet(
    tmp_path: Path,
    models: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "model.onnx"
    real_replace = os.replace
    monkeypatch.setattr(
        os,
        "replace",
        lambda s, d: (_ for _ in ()).throw(Crash) if Path(d) == path else real_replace(s, d),
    )
    with pytest.raises(Crash):
        write_model(path, models[0], card_for(models[0], 1))
    monkeypatch.undo()

    assert not path.exists()
    assert OnnxEncoder.load(path).version == 1


def test_next_write_removes_what_interrupted_writes_left(
    tmp_path: Path, models: list[bytes]
) -> None:
    path = tmp_path / "model.onnx"
    write_model(path, models[0], card_for(models[0], 1))
    leftovers = [
        staged_path(path, sha256_hex(models[1])).name,
        ".model.onnx.abc123.tmp",
        ".model.card.json.x_y.tmp",
        f".{staged_path(path, sha256_hex(models[2])).name}.q1w2e3.tmp",
    ]
    unrelated = ["state.json", ".state.json.k9.tmp", "other.onnx", "model.notes.onnx"]
    for name in leftovers + unrelated:
        (tmp_path / name).write_bytes(b"partial")

    write_model(path, models[2], card_for(models[2], 2))

    assert extra_files(tmp_path, "model.onnx", "model.card.json") == sorted(unrelated)


def test_neither_file_matching_the_card_is_an_error(tmp_path: Path, models: list[bytes]) -> None:
    path = tmp_path / "model.onnx"
    write_model(path, models[0], card_for(models[0], 1))
    path.write_bytes(models[1])

    with pytest.raises(ModelError, match="sha256"):
        read_model(path)
    assert read_card(path).version == 1


# --- state.json and rounds.jsonl ----------------------------------------------------------------


def test_save_state_removes_temp_files_of_killed_saves(tmp_path: Path) -> None:
    (tmp_path / ".state.json.abc.tmp").write_text('{"agent_id": "0", "cont')

    save_state(tmp_path, AgentState("0", "ctx", next_round=3))

    assert extra_files(tmp_path) == ["state.json"]
    assert load_state(tmp_path, "0", "ctx").next_round == 3


def test_append_round_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    append_round(tmp_path, RoundRecord(round=0))

    assert synced and read_rounds(tmp_path) == [RoundRecord(round=0)]


def test_read_rounds_skips_a_torn_last_line(tmp_path: Path) -> None:
    (tmp_path / "rounds.jsonl").write_text('{"round": 0}\n{"round": 1}\n{"round": 2, "subcon')

    assert [r.round for r in read_rounds(tmp_path)] == [0, 1]


def test_read_rounds_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_rounds(tmp_path) == []


def test_read_rounds_refuses_damage_before_the_last_line(tmp_path: Path) -> None:
    (tmp_path / "rounds.jsonl").write_text('{"round": 0}\n{"rou\n{"round": 2}\n')

    with pytest.raises(ConfigError, match="line 2"):
        read_rounds(tmp_path)


def test_append_after_a_torn_line_cuts_it_off(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    path.write_text('{"round": 0}\n{"round": 1, "subcon')

    append_round(tmp_path, RoundRecord(round=1))

    lines = path.read_text().splitlines()
    assert lines[0] == '{"round": 0}' and len(lines) == 2
    assert [r.round for r in read_rounds(tmp_path)] == [0, 1]


def test_append_after_a_complete_line_without_newline_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    path.write_text('{"round": 0}\n{"round": 1}')

    append_round(tmp_path, RoundRecord(round=2))

    assert [r.round for r in read_rounds(tmp_path)] == [0, 1, 2]


def test_append_to_a_file_that_is_only_a_torn_line(tmp_path: Path) -> None:
    (tmp_path / "rounds.jsonl").write_bytes(b'{"rou')

    append_round(tmp_path, RoundRecord(round=0))

    assert read_rounds(tmp_path) == [RoundRecord(round=0)]


# --- SIGKILL at random moments ---------------------------------------------------------------

# The child does what an agent does at the end of each round, as fast as it can: install a new
# model, save the state, append the round's record. It starts from whatever it finds on disk.
CHILD = """
import sys
from pathlib import Path
from typing import Any
from osml.agent.modelcard import ModelCard, sha256_hex, write_model
from osml.agent.records import RoundRecord
from osml.agent.state import append_round, load_state, save_state

state_dir, models_dir = Path(sys.argv[1]), Path(sys.argv[2])
window, n_features, embedding_dim = map(int, sys.argv[3:6])
blobs = [p.read_bytes() for p in sorted(models_dir.glob("*.onnx"))]
state = load_state(state_dir, "victim", "kill-loop")
print("ready", flush=True)
while True:
    version = state.model_version + 1
    model = blobs[version % len(blobs)]
    card = ModelCard(version=version, architecture="tiny", window=window, n_features=n_features,
                     embedding_dim=embedding_dim, sha256=sha256_hex(model))
    write_model(state_dir / "model.onnx", model, card)
    state.model_version = version
    state.next_round += 1
    save_state(state_dir, state)
    append_round(state_dir, RoundRecord(round=state.next_round - 1, model_version=version))
"""

KILLS = 50


def test_writer_killed_at_random_moments_always_leaves_a_valid_model_and_state(
    tmp_path: Path, models: list[bytes]
) -> None:
    models_dir, state_dir = tmp_path / "models", tmp_path / "state"
    models_dir.mkdir()
    state_dir.mkdir()
    for i, model in enumerate(models):
        (models_dir / f"{i}.onnx").write_bytes(model)
    rng = random.Random(20240605)
    last_round, versions = 0, []

    for kill in range(KILLS):
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                str(state_dir),
                str(models_dir),
                str(WINDOW),
                str(N_FEATURES),
                str(EMB),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n", (
                f"kill {kill}: child did not start"
            )
            time.sleep(rng.uniform(0.0, 0.08))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            if child.stdout is not None:
                child.stdout.close()

        state = load_state(state_dir, "victim", "kill-loop")
        assert state.next_round >= last_round, (
            f"kill {kill}: next_round went back to {state.next_round}"
        )
        last_round = state.next_round
        if card_path(state_dir / "model.onnx").exists():
            enc = OnnxEncoder.load(state_dir / "model.onnx")
            # The model is written before the state, so it is at most one version ahead.
            assert enc.version in (state.model_version, state.model_version + 1), f"kill {kill}"
            versions.append(enc.version)
        else:
            assert state.model_version == 0, (
                f"kill {kill}: state says v{state.model_version} but there is no model"
            )
        rounds = [r.round for r in read_rounds(state_dir)]
        assert rounds == sorted(set(rounds)) and all(r < state.next_round for r in rounds), (
            f"kill {kill}"
        )
        # Leftovers of a killed write are removed by the next one: they never pile up.
        assert (
            len(
                extra_files(
                    state_dir, "state.json", "rounds.jsonl", "model.onnx", "model.card.json"
                )
            )
            <= 3
        )

    assert versions == sorted(versions) and versions[-1] > 0


def test_state_written_before_the_equilibrium_memory_still_loads(tmp_path: Path) -> None:
    """Older state files kept only the equilibrium streak; it becomes the detector's state."""
    (tmp_path / "state.json").write_text(
        json.dumps({"agent_id": "a", "context": "c", "next_round": 7, "equilibrium_streak": 4})
    )
    state = load_state(tmp_path, "a", "c")
    assert state.next_round == 7 and state.equilibrium == {"streak": 4}


def test_rounds_file_is_rotated_so_its_size_stays_bounded(tmp_path: Path) -> None:
    for r in range(200):
        append_round(tmp_path, RoundRecord(round=r), max_bytes=4096)

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["rounds.jsonl", "rounds.jsonl.1"]
    assert all((tmp_path / f).stat().st_size < 4096 + 1024 for f in files)
    rounds = [r.round for r in read_rounds(tmp_path)]
    assert rounds == list(range(rounds[0], 200)) and rounds[0] > 0  # the newest, in order


# --- state.json is checked field by field ----------------------------------------------------

GOOD_STATE = {
    "agent_id": "0",
    "context": "lab",
    "next_round": 5,
    "model_version": 2,
    "memory": {"affinity": {"1": 0.7}, "seen": {"1": 4}, "members": {"1": True}},
    "subcontext": ["0", "1"],
    "equilibrium": {"streak": 1, "last_subcontext": ["0", "1"], "settled": False, "recent": [0.1]},
    "learner_rounds": 5,
    "anomaly": {},
    "screening": {
        "member_rounds": {"1": 4},
        "agree": {"1": 0.9, "x": -0.2},
        "stalls": [["x", "1"]],
        "suspects": [],
        "calls": 5,
    },
    "format": 1,
}

BAD_STATES = [
    pytest.param({"next_round": "3"}, "next_round", id="string-round"),
    pytest.param({"next_round": 2**70}, "next_round", id="round-2**70"),
    pytest.param({"next_round": -1}, "next_round", id="negative-round"),
    pytest.param({"next_round": 2.5}, "next_round", id="float-round"),
    pytest.param({"next_round": True}, "next_round", id="bool-round"),
    pytest.param({"model_version": None}, "model_version", id="null-version"),
    pytest.param({"memory": []}, "memory", id="list-for-dict"),
    pytest.param({"memory": {"affinity": {"1": "high"}}}, "memory.affinity", id="affinity-text"),
    pytest.param({"memory": {"seen": {"1": -2}}}, "memory.seen", id="seen-negative"),
    pytest.param({"subcontext": "0,1"}, "subcontext", id="string-for-list"),
    pytest.param({"subcontext": [0, 1]}, "subcontext", id="ints-for-ids"),
    pytest.param({"equilibrium": {"streak": "2"}}, "equilibrium.streak", id="streak-text"),
    pytest.param({"equilibrium": {"recent": {"a": 1}}}, "equilibrium.recent", id="recent-map"),
    pytest.param({"anomaly": {"format": 99}}, "anomaly", id="anomaly-format"),
    pytest.param({"screening": []}, "screening", id="screening-list"),
    pytest.param(
        {"screening": {"member_rounds": {"1": 1.5}}}, "screening.member_rounds", id="rounds-float"
    ),
    pytest.param({"screening": {"agree": {"1": 2.0}}}, "screening.agree", id="agree-over-1"),
    pytest.param({"screening": {"stalls": [["x"]]}}, "screening.stalls", id="stall-not-a-pair"),
    pytest.param({"screening": {"suspects": "x"}}, "screening.suspects", id="suspects-text"),
    pytest.param({"screening": {"calls": -1}}, "screening.calls", id="calls-negative"),
    pytest.param({"screening": {"votes": {}}}, "screening.votes", id="screening-unknown"),
    pytest.param({"agent_id": 0}, "agent_id", id="int-id"),
    pytest.param({"rounds_done": 3}, "rounds_done", id="unknown-key"),
    pytest.param({"format": 2}, "format", id="other-format"),
]


@pytest.mark.parametrize(("change", "key"), BAD_STATES)
def test_a_bad_state_field_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, change: dict[str, object], key: str
) -> None:
    (tmp_path / "state.json").write_text(json.dumps({**GOOD_STATE, **change}))

    with pytest.raises(ConfigError) as info:
        load_state(tmp_path, "0", "lab")

    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'state.json'}: ") and "\n" not in message
    assert key in message and "move it away" in message


def test_a_good_state_loads_and_the_round_bound_is_inclusive(tmp_path: Path) -> None:
    from osml.wire.codec import MAX_ROUND

    (tmp_path / "state.json").write_text(json.dumps({**GOOD_STATE, "next_round": MAX_ROUND}))
    state = load_state(tmp_path, "0", "lab")
    assert state.next_round == MAX_ROUND and state.memory == GOOD_STATE["memory"]
    assert state.screening == GOOD_STATE["screening"]

    (tmp_path / "state.json").write_text(json.dumps([GOOD_STATE]))
    with pytest.raises(ConfigError, match="JSON object"):
        load_state(tmp_path, "0", "lab")


@pytest.mark.parametrize(
    ("change", "key"),
    [({"next_round": 2**70}, "next_round"), ({"memory": [1, 2]}, "memory")],
)
def test_osml_agent_stops_on_a_bad_state_file_with_one_line(
    tmp_path: Path, change: dict[str, object], key: str
) -> None:
    # Before the check, next_round = 2**70 exited 0 without running a round.
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.json").write_text(json.dumps({**GOOD_STATE, **change}))
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nid = "0"\ncontext = "lab"\nstate_dir = "state"\n\n[neighbours]\nids = ["1"]\n\n'
        '[data]\nsource = "generated:simple"\n\n[rounds]\ncount = 3\n'
    )

    done = subprocess.run(
        [sys.executable, "-m", "osml.cli", "agent", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert str(state_dir / "state.json") in errors[0] and key in errors[0]


# --- rounds.jsonl repaired from its tail -------------------------------------------------------


class _CountingFile:
    """A binary file that counts the bytes read from it."""

    def __init__(self, fh: Any, counter: list[int]) -> None:
        self._fh, self._counter = fh, counter

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._counter.append(len(data))
        return bytes(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from osml.agent import state as state_module

    reads: list[int] = []
    monkeypatch.setattr(
        state_module, "open", lambda *a, **k: _CountingFile(open(*a, **k), reads), raising=False
    )
    return reads


def _huge_rounds_file(path: Path, tail: bytes, size: int = 300 << 20) -> int:
    """A sparse ``size``-byte rounds file: zeros (no disk), then two whole records and ``tail``.
    Returns where ``tail`` starts."""
    records = b"".join(
        (json.dumps(RoundRecord(round=r).to_json(), sort_keys=True) + "\n").encode() for r in (7, 8)
    )
    with open(path, "wb") as fh:
        fh.truncate(size - len(records) - len(tail))
        fh.seek(0, os.SEEK_END)
        fh.write(b"\n" + records + tail)
        return fh.tell() - len(tail)


def test_startup_repair_of_a_300_mb_file_reads_only_its_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from osml.agent.state import _TAIL_CHUNK, repair_rounds

    torn = json.dumps(RoundRecord(round=9).to_json())[:40].encode()
    keep = _huge_rounds_file(tmp_path / "rounds.jsonl", torn)
    reads = _count_reads(monkeypatch)

    repair_rounds(tmp_path)

    assert (tmp_path / "rounds.jsonl").stat().st_size == keep  # the torn line is gone
    with open(tmp_path / "rounds.jsonl", "rb") as fh:
        fh.seek(keep - 1)
        assert fh.read() == b"\n"
    assert 0 < sum(reads) <= 1 + _TAIL_CHUNK + len(torn)  # the last byte, one chunk, the line


def test_a_whole_last_record_without_its_newline_is_completed_from_the_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from osml.agent.state import _TAIL_CHUNK, repair_rounds

    whole = json.dumps(RoundRecord(round=9).to_json(), sort_keys=True).encode()
    start = _huge_rounds_file(tmp_path / "rounds.jsonl", whole, size=40 << 20)
    reads = _count_reads(monkeypatch)

    repair_rounds(tmp_path)
    append_round(tmp_path, RoundRecord(round=10), max_bytes=1 << 30)  # not rotated here

    with open(tmp_path / "rounds.jsonl", "rb") as fh:
        fh.seek(start)
        lines = fh.read().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [9, 10]
    assert sum(reads) <= 2 * (1 + _TAIL_CHUNK + len(whole))


def test_a_last_line_longer_than_any_record_is_cut_without_being_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from osml.agent.state import MAX_LINE_BYTES, repair_rounds

    path = tmp_path / "rounds.jsonl"
    head = (json.dumps(RoundRecord(round=0).to_json(), sort_keys=True) + "\n").encode()
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(len(head) + 3 * MAX_LINE_BYTES)  # one 3 MiB line of zeros, no newline
    reads = _count_reads(monkeypatch)

    repair_rounds(tmp_path)

    assert path.read_bytes() == head
    assert max(reads) <= 64 << 10  # looked for the newline chunk by chunk, never read the line
    assert [r.round for r in read_rounds(tmp_path)] == [0]
