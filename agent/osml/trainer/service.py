"""The trainer process: serves the agents of one host over a Unix-domain socket.

Agents never import torch; they send training jobs here
(:class:`osml.agent.trainer_client.TrainerClient`, framing in :mod:`osml.wire.ipc`). One thread per
connection, one request per connection. Each agent (key: context and agent id) owns an
:class:`~osml.trainer.fit.EncoderTrainer` and a lock, so the jobs of one agent run one after the
other while different agents train concurrently (torch runs single-threaded per job). Building an
encoder touches torch's global RNG, so that part is serialised across agents.

After every job the agent's state - encoder weights and buffers, decoder, AdamW moments, the
batch sampler's generator and the number of rounds trained - is checkpointed under
``state_dir`` as an ``.npz`` (plain arrays, no pickle, not ``torch.save``) plus a
``state.json`` that names it and records the version, the rounds trained, settings and
shapes. The JSON is written last and atomically, so it always points at a complete weights
file. A restarted trainer reloads an agent when it sends ``init`` (or any job) and reports the
version it had, and the next round continues exactly where the previous trainer stopped.

A failed round (non-finite loss, export parity failure) rolls the agent back to its state before
the round, so an agent's trainer state always matches the last model it was given. Bad requests
get an ``{"ok": false, "error": ...}`` reply and never stop the server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from osml.agent.modelcard import ModelCard, sha256_hex
from osml.errors import OsmlError, TrainerError
from osml.files import write_atomic
from osml.trainer.export import export_onnx
from osml.trainer.fit import EncoderTrainer
from osml.trainer.settings import ARCHITECTURE_NAMES, TrainerSettings, settings_from_map
from osml.wire import topics
from osml.wire.ipc import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    check_socket_path,
    recv_msg,
    send_msg,
    unpack_array,
)

__all__ = ["TrainerService", "parse_settings", "serve"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
MAX_WINDOW = 4096
MAX_FEATURES = 4096
MAX_EMBEDDING_DIM = 4096
MAX_VERSION = 2**62
PARITY_WINDOWS = 256
REQUEST_TIMEOUT = 30.0
"""Seconds a client may take to send its request (and to read the reply)."""

_WEIGHTS_NAME = re.compile(r"weights-[0-9a-f]{16}\.npz")
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")

AgentKey = tuple[str, str]  # (context, agent_id)


# --- request fields -----------------------------------------------------------------------


def _name(req: dict[str, Any], key: str) -> str:
    try:
        value = topics.check_name("context" if key == "context" else "agent id", req.get(key))
    except ValueError as exc:
        raise TrainerError(f"{key} must be a string that is one topic level ({exc})") from None
    # Names go into log lines and file names here: no control characters either.
    if any(ord(c) < 32 for c in value):
        raise TrainerError(f"{key} must not contain control characters")
    return value


def _int(req: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = req.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise TrainerError(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def parse_settings(raw: object, architecture: str) -> TrainerSettings:
    """:class:`TrainerSettings` from an untrusted map: known keys, checked types, checked values."""
    if not isinstance(raw, dict):
        raise TrainerError("bad trainer settings: expected a map of TrainerSettings fields")
    try:
        return settings_from_map(raw, architecture)
    except ValueError as exc:
        raise TrainerError(f"bad trainer settings: {exc}") from exc


# --- trainer state as plain arrays ----------------------------------------------------------


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def state_arrays(tr: EncoderTrainer) -> dict[str, np.ndarray]:
    """Everything a round depends on, as named numpy arrays."""
    out = {f"encoder/{k}": _np(v) for k, v in tr.encoder.state_dict().items()}
    if tr.decoder is not None:
        out.update({f"decoder/{k}": _np(v) for k, v in tr.decoder.state_dict().items()})
    for idx, entry in tr.optim.state_dict()["state"].items():
        for name, value in entry.items():
            out[f"optim/{idx}/{name}"] = (
                _np(value) if isinstance(value, torch.Tensor) else np.asarray(value)
            )
    out["generator"] = _np(tr.gen.get_state())
    return out


def _fits(module: torch.nn.Module, arrays: dict[str, np.ndarray]) -> bool:
    want = module.state_dict()
    return set(arrays) == set(want) and all(
        arrays[k].shape == tuple(want[k].shape) and arrays[k].dtype == np.float32 for k in want
    )


def _optim_state(
    tr: EncoderTrainer, arrays: dict[str, np.ndarray]
) -> dict[int, dict[str, torch.Tensor]] | None:
    params = [p for group in tr.optim.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        parts = key.split("/")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        idx = int(parts[1])
        if idx >= len(params) or value.dtype != np.float32:
            return None
        if parts[2] != "step" and value.shape != tuple(params[idx].shape):
            return None
        state.setdefault(idx, {})[parts[2]] = torch.from_numpy(value.copy())
    return state


def load_state(tr: EncoderTrainer, arrays: dict[str, np.ndarray]) -> bool:
    """Restore ``tr`` from :func:`state_arrays` output; False (``tr`` untouched) if the encoder
    does not fit. A decoder, optimiser or generator state that does not fit starts afresh."""
    enc = {k[8:]: v for k, v in arrays.items() if k.startswith("encoder/")}
    if not _fits(tr.encoder, enc):
        return False
    tr.encoder.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in enc.items()})
    dec = {k[8:]: v for k, v in arrays.items() if k.startswith("decoder/")}
    dec_ok = tr.decoder is None and not dec
    if tr.decoder is not None and _fits(tr.decoder, dec):
        tr.decoder.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in dec.items()})
        dec_ok = True
    optim = (
        _optim_state(tr, {k: v for k, v in arrays.items() if k.startswith("optim/")})
        if dec_ok
        else None
    )
    groups = tr.optim.state_dict()["param_groups"]
    tr.optim.load_state_dict({"state": optim or {}, "param_groups": groups})
    gen = arrays.get("generator")
    if gen is not None and gen.dtype == np.uint8 and gen.shape == tuple(tr.gen.get_state().shape):
        tr.gen.set_state(torch.from_numpy(gen.copy()))
    tr.encoder.eval()
    return True


# --- the service --------------------------------------------------------------------------


@dataclasses.dataclass
class _Slot:
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    trainer: EncoderTrainer | None = None
    registration: dict[str, Any] | None = None
    seed: int = 0


class TrainerService:
    """Request handling, independent of the socket: ``handle(request) -> reply``."""

    def __init__(self, state_dir: str | os.PathLike[str], threads: int = 1) -> None:
        self.state_dir = Path(state_dir)
        self.threads = threads
        self._slots: dict[AgentKey, _Slot] = {}
        self._slots_lock = threading.Lock()
        self._build_lock = threading.Lock()  # encoder construction uses torch's global RNG
        self._ops: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "ping": self._ping,
            "init": self._init,
            "initial_model": self._initial_model,
            "train": self._train,
        }

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            if req.get("v") != PROTOCOL_VERSION:
                raise TrainerError(
                    f"protocol version {req.get('v')!r} not supported "
                    f"(this trainer speaks {PROTOCOL_VERSION})"
                )
            op = req.get("op")
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise TrainerError(f"unknown op {op!r} (one of {sorted(self._ops)})")
            return {"ok": True, **handler(req)}
        except OsmlError as exc:
            return {"ok": False, "error": " ".join(str(exc).split())}
        except Exception as exc:  # a bug or torch refusing something: report it, keep serving
            log.exception("request failed")
            return {
                "ok": False,
                "error": " ".join(f"internal error: {type(exc).__name__}: {exc}".split()),
            }

    # --- ops ------------------------------------------------------------------------------

    def _ping(self, req: dict[str, Any]) -> dict[str, Any]:
        with self._slots_lock:
            n = sum(1 for s in self._slots.values() if s.trainer is not None)
        return {"agents": n, "pid": os.getpid()}

    def _init(self, req: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        agent_id, context = _name(req, "agent_id"), _name(req, "context")
        architecture = req.get("architecture")
        if architecture not in ARCHITECTURE_NAMES:
            raise TrainerError(
                f"architecture must be one of {sorted(ARCHITECTURE_NAMES)}, got {architecture!r}"
            )
        window = _int(req, "window", 1, MAX_WINDOW)
        n_features = _int(req, "n_features", 1, MAX_FEATURES)
        dim = _int(req, "embedding_dim", 1, MAX_EMBEDDING_DIM)
        seed = _int(req, "seed", 0, 2**63 - 1)
        settings = parse_settings(req.get("settings", {}), architecture)
        if settings.shared_dims > dim:
            raise TrainerError(
                f"bad trainer settings: shared_dims: must be <= embedding_dim {dim}, "
                f"got {settings.shared_dims}"
            )
        train_data = unpack_array(req.get("train_data"), 2, "train_data")
        if train_data.shape[0] < 1 or train_data.shape[1] != n_features:
            raise TrainerError(
                f"train_data must have shape (steps >= 1, {n_features}), got {train_data.shape}"
            )
        anchor = unpack_array(req.get("anchor"), 1, "anchor")
        if anchor.shape != (dim,):
            raise TrainerError(f"anchor must have shape ({dim},), got {anchor.shape}")
        registration = {
            "architecture": architecture,
            "window": window,
            "n_features": n_features,
            "embedding_dim": dim,
            "settings": dataclasses.asdict(settings),
        }
        key = (context, agent_id)
        slot = self._slot(key)
        with slot.lock:
            held = slot.trainer
            if (
                held is not None
                and slot.registration == registration
                and np.array_equal(_np(held.encoder.state_dict()["offset"]), anchor)
            ):
                if req.get("rescale") is True:
                    # A live agent with more of its stream than at registration: its inputs'
                    # scale, not its weights, changes.
                    data = train_data.astype(np.float64)
                    held.encoder.set_normalisation(data.mean(axis=0), data.std(axis=0))
                    self._checkpoint(key, slot)
                    log.info("rescale %s/%s from %d steps", context, agent_id, len(data))
                return {"version": held.version}
            if held is not None:
                previous: tuple[dict[str, np.ndarray], int, int] | None = (
                    state_arrays(held),
                    held.version,
                    held.fits,
                )
            else:
                ck = self._read_checkpoint(key)
                previous = (ck[1], ck[0]["version"], ck[0]["fits"]) if ck is not None else None
            tr = self._build(settings, window, n_features, dim, seed, train_data, anchor)
            resumed = False
            if previous is not None:
                if load_state(tr, previous[0]):
                    tr.encoder.set_offset(anchor)  # the agent's anchor is authoritative
                    tr.version, tr.fits = previous[1], previous[2]
                    resumed = True
                else:
                    log.warning(
                        "%s/%s: the saved encoder does not fit the new registration; "
                        "starting afresh",
                        context,
                        agent_id,
                    )
            slot.trainer, slot.registration, slot.seed = tr, registration, seed
            self._checkpoint(key, slot)
        log.info(
            "init %s/%s %s version=%d %s seconds=%.2f",
            context,
            agent_id,
            architecture,
            tr.version,
            "resumed" if resumed else "new",
            time.perf_counter() - t0,
        )
        return {"version": tr.version}

    def _initial_model(self, req: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        key = (_name(req, "context"), _name(req, "agent_id"))
        version = _int(req, "version", 0, MAX_VERSION)
        slot = self._slot(key)
        with slot.lock:
            tr = self._loaded(key, slot)
            windows = self._windows(req, tr)
            model, card = self._export(tr, windows, version, key)
            tr.version = version
            self._checkpoint(key, slot)
        log.info(
            "initial_model %s/%s version=%d seconds=%.2f",
            key[0],
            key[1],
            version,
            time.perf_counter() - t0,
        )
        return {"model": model, "card": card.to_json()}

    def _train(self, req: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        key = (_name(req, "context"), _name(req, "agent_id"))
        rnd = _int(req, "round", 0, MAX_VERSION)
        version = _int(req, "version", 0, MAX_VERSION)
        slot = self._slot(key)
        with slot.lock:
            tr = self._loaded(key, slot)
            windows = self._windows(req, tr)
            targets = unpack_array(req.get("targets"), 2, "targets")
            if targets.shape != (len(windows), tr.encoder.embedding_dim):
                raise TrainerError(
                    f"targets must have shape ({len(windows)}, {tr.encoder.embedding_dim}), "
                    f"got {targets.shape}"
                )
            before, fits = state_arrays(tr), tr.fits
            try:
                losses = tr.fit(windows, targets)
                if not all(math.isfinite(v) for v in losses.values()):
                    raise TrainerError(
                        f"round {rnd} diverged (losses {losses}); "
                        "the agent's trainer state was rolled back"
                    )
                model, card = self._export(tr, windows, version, key)
            except BaseException:
                load_state(tr, before)
                tr.fits = fits
                raise
            tr.version = version
            self._checkpoint(key, slot)
        log.info(
            "train %s/%s round=%d version=%d windows=%d align=%.4g ssl=%.4g seconds=%.2f",
            key[0],
            key[1],
            rnd,
            version,
            len(windows),
            losses["align"],
            losses["ssl"],
            time.perf_counter() - t0,
        )
        return {"model": model, "card": card.to_json(), "losses": losses}

    # --- helpers --------------------------------------------------------------------------

    def _slot(self, key: AgentKey) -> _Slot:
        with self._slots_lock:
            return self._slots.setdefault(key, _Slot())

    def _build(
        self,
        settings: TrainerSettings,
        window: int,
        n_features: int,
        dim: int,
        seed: int,
        train_data: np.ndarray,
        anchor: np.ndarray | None,
    ) -> EncoderTrainer:
        with self._build_lock:
            try:
                return EncoderTrainer(
                    settings,
                    window,
                    n_features,
                    dim,
                    seed=seed,
                    train_data=train_data,
                    offset=anchor,
                )
            finally:
                torch.set_num_threads(
                    self.threads
                )  # EncoderTrainer sets its own; the service decides

    def _loaded(self, key: AgentKey, slot: _Slot) -> EncoderTrainer:
        """The agent's trainer, reloaded from its checkpoint after a trainer restart."""
        if slot.trainer is not None:
            return slot.trainer
        ck = self._read_checkpoint(key)
        if ck is None:
            raise TrainerError(
                f"agent {key[1]!r} of context {key[0]!r} is not registered; send init first"
            )
        meta, arrays = ck
        settings = parse_settings(meta["settings"], meta["architecture"])
        tr = self._build(
            settings,
            meta["window"],
            meta["n_features"],
            meta["embedding_dim"],
            meta["seed"],
            np.zeros((1, meta["n_features"]), np.float32),
            None,
        )
        if not load_state(tr, arrays):
            raise TrainerError(
                f"the checkpoint of {key[0]}/{key[1]} does not fit its own settings; send init"
            )
        tr.version, tr.fits = meta["version"], meta["fits"]
        slot.trainer = tr
        slot.registration = {
            k: meta[k] for k in ("architecture", "window", "n_features", "embedding_dim")
        }
        slot.registration["settings"] = dataclasses.asdict(settings)
        slot.seed = meta["seed"]
        log.info("reloaded %s/%s version=%d from its checkpoint", key[0], key[1], tr.version)
        return tr

    @staticmethod
    def _windows(req: dict[str, Any], tr: EncoderTrainer) -> np.ndarray:
        windows = unpack_array(req.get("windows"), 3, "windows")
        enc = tr.encoder
        if len(windows) < 2 or windows.shape[1:] != (enc.window, enc.n_features):
            raise TrainerError(
                f"windows must have shape (n >= 2, {enc.window}, {enc.n_features}), "
                f"got {windows.shape}"
            )
        return windows

    @staticmethod
    def _export(
        tr: EncoderTrainer, windows: np.ndarray, version: int, key: AgentKey
    ) -> tuple[bytes, ModelCard]:
        # EncoderTrainer.export numbers versions itself; the agent owns the numbering here.
        sample = windows[:: max(1, len(windows) // PARITY_WINDOWS)][:PARITY_WINDOWS]
        model, card, _ = export_onnx(
            tr.encoder.eval(), sample, version, agent=key[1], context=key[0]
        )
        return model, card

    # --- checkpoints ----------------------------------------------------------------------

    def _agent_dir(self, key: AgentKey) -> Path:
        digest = hashlib.sha256(f"{key[0]}\0{key[1]}".encode()).hexdigest()[:12]
        slug = f"{_SLUG.sub('_', key[0])[:40]}__{_SLUG.sub('_', key[1])[:40]}"
        return self.state_dir / "agents" / f"{slug}-{digest}"

    def _checkpoint(self, key: AgentKey, slot: _Slot) -> bool:
        tr, reg = slot.trainer, slot.registration
        assert tr is not None and reg is not None
        arrays = state_arrays(tr)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
        data = buf.getvalue()
        digest = sha256_hex(data)
        name = f"weights-{digest[:16]}.npz"
        meta = {
            "format": CHECKPOINT_FORMAT,
            "context": key[0],
            "agent_id": key[1],
            "version": tr.version,
            "fits": tr.fits,  # rounds trained: the learning-rate schedule depends on it
            "seed": slot.seed,
            **reg,
            "weights": name,
            "sha256": digest,
            "shapes": {k: list(v.shape) for k, v in arrays.items()},
            "saved_at": time.time(),
        }
        folder = self._agent_dir(key)
        try:
            write_atomic(folder / name, data)
            write_atomic(
                folder / "state.json", (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()
            )
            for old in folder.glob("weights-*.npz"):
                if old.name != name:
                    old.unlink(missing_ok=True)
        except OSError as exc:
            # The round itself succeeded; only restart-resilience is lost, so do not fail it.
            log.error("cannot checkpoint %s/%s in %s: %s", key[0], key[1], folder, exc)
            return False
        return True

    def _read_checkpoint(
        self, key: AgentKey
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        folder = self._agent_dir(key)
        path = folder / "state.json"
        if not path.exists():
            return None
        try:
            meta = json.loads(path.read_text())
            if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
                found = meta.get("format") if isinstance(meta, dict) else None
                raise ValueError(f"format {found!r} not supported")
            if (meta.get("context"), meta.get("agent_id")) != key:
                raise ValueError("it belongs to another agent")
            meta.setdefault("fits", 0)  # checkpoints written before it was recorded
            for k in ("version", "fits", "window", "n_features", "embedding_dim", "seed"):
                if not isinstance(meta.get(k), int) or isinstance(meta.get(k), bool) or meta[k] < 0:
                    raise ValueError(f"{k} is not a non-negative integer")
            if meta.get("architecture") not in ARCHITECTURE_NAMES or not isinstance(
                meta.get("settings"), dict
            ):
                raise ValueError("architecture or settings missing")
            name = meta.get("weights")
            if not isinstance(name, str) or not _WEIGHTS_NAME.fullmatch(name):
                raise ValueError(f"weights file name {name!r} not accepted")
            data = (folder / name).read_bytes()
            if sha256_hex(data) != meta.get("sha256"):
                raise ValueError(f"{name} does not match its sha256")
            # Plain arrays only: allow_pickle=False refuses any object array in the file.
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            shapes = meta.get("shapes")
            if (
                not isinstance(shapes, dict)
                or {k: list(v.shape) for k, v in arrays.items()} != shapes
            ):
                raise ValueError("array shapes differ from state.json")
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring the checkpoint of %s/%s in %s: %s", key[0], key[1], folder, exc)
            return None
        return meta, arrays


# --- the socket server --------------------------------------------------------------------


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(REQUEST_TIMEOUT)
        try:
            if not sock.recv(1, socket.MSG_PEEK):
                return  # connected and closed: a liveness probe
            req = recv_msg(sock, self.server.max_request_bytes)
        except (TrainerError, OSError) as exc:
            log.warning("bad request: %s", exc)
            reply = {"ok": False, "error": f"bad request: {exc}"}
        else:
            reply = self.server.service.handle(req)
        try:
            send_msg(sock, reply)
        except TrainerError as exc:
            log.warning("cannot reply (client gone?): %s", exc)


class _Server(socketserver.ThreadingUnixStreamServer):
    # Job threads are joined on close, so a stopped service never checkpoints behind the back of
    # its successor.
    daemon_threads = False
    block_on_close = True

    def __init__(self, path: Path, service: TrainerService, max_request_bytes: int) -> None:
        self.service = service
        self.max_request_bytes = max_request_bytes
        super().__init__(str(path), _Handler)

    def server_bind(self) -> None:
        super().server_bind()
        # Before listen(): nobody can connect while the socket is still world-accessible.
        os.chmod(str(self.server_address), 0o600)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("unexpected error while serving a connection")


def _remove_stale_socket(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise TrainerError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left behind by a trainer that died
        return
    except OSError as exc:
        raise TrainerError(f"cannot tell whether a trainer is listening on {path}: {exc}") from exc
    finally:
        probe.close()
    raise TrainerError(f"another trainer is already listening on {path}")


def _default_logging() -> None:
    # One line per job on stderr, unless the application configured logging itself.
    if not logging.getLogger("osml").hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s osml-trainer %(levelname)s %(message)s")
        )
        logger = logging.getLogger("osml.trainer")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def serve(
    socket_path: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    *,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    threads: int = 1,
    max_request_bytes: int = MAX_MESSAGE_BYTES,
) -> None:
    """Serve training jobs on ``socket_path`` until ``stop`` is set (forever without one).

    ``ready`` is set once the socket accepts connections. A socket file left by a dead trainer
    is replaced; a live one is not (:class:`TrainerError`). In-flight jobs finish before return.
    """
    path = check_socket_path(socket_path)
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    _default_logging()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # only allowed before torch's first parallel work; already set or moot
    _remove_stale_socket(path)
    server = _Server(path, TrainerService(state, threads), max_request_bytes)
    inode = os.stat(path).st_ino
    log.info("trainer listening on %s (state in %s, pid %d)", path, state, os.getpid())
    accept: threading.Thread | None = None
    try:
        if stop is None:
            if ready is not None:
                ready.set()
            server.serve_forever(poll_interval=0.5)
        else:
            accept = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="osml-trainer-accept",
                daemon=True,
            )
            accept.start()
            if ready is not None:
                ready.set()
            stop.wait()
    finally:
        if accept is not None:
            server.shutdown()
            accept.join()
        server.server_close()  # closes the listening socket, then waits for in-flight jobs
        try:
            if os.stat(path).st_ino == inode:  # not a successor's socket
                path.unlink()
        except FileNotFoundError:
            pass
        log.info("trainer on %s stopped", path)
