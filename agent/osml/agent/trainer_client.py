"""The agent's side of the local trainer: one Unix-socket request per call, no torch.

The agent hands training jobs to a trainer process on the same host (raw data never leaves the
host). Each call opens its own connection, so a trainer that restarted between two calls is simply
reached again. Anything that goes wrong - no socket, connection refused, timeout, the trainer
dying mid-job, an error or malformed reply - raises :class:`~osml.errors.TrainerError` with a
one-line reason, and the agent keeps its current model. A returned model is checked against its
card and against what was registered (:class:`~osml.errors.ModelError` otherwise).

Protocol (see :mod:`osml.wire.ipc` for framing): requests are maps with ``"v": 1`` and ``"op"``;
replies are ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. Arrays are
:func:`osml.wire.ipc.pack_array` maps.

* ``ping`` -> ``agents``, ``pid``
* ``init`` (``agent_id context architecture window n_features embedding_dim seed train_data anchor
  settings``) -> ``version``
* ``initial_model`` (``agent_id context windows version``) -> ``model card``
* ``train`` (``agent_id context round windows targets version``) -> ``model card losses``

``card`` is the model card's JSON text, ``model`` the ONNX bytes.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from osml.agent.modelcard import ModelCard
from osml.errors import ModelError, TrainerError
from osml.wire.ipc import PROTOCOL_VERSION, check_socket_path, pack_array, recv_msg, send_msg

__all__ = ["TrainerClient"]


def _pack(name: str, a: npt.ArrayLike) -> dict[str, Any]:
    try:
        return pack_array(a)
    except ValueError as exc:
        raise TrainerError(f"{name}: {exc}") from exc


@dataclass(frozen=True)
class _Registration:
    context: str
    architecture: str
    window: int
    n_features: int
    embedding_dim: int


class TrainerClient:
    """Talks to ``osml trainer`` over ``socket_path``; ``timeout`` bounds each wait (seconds)."""

    def __init__(self, socket_path: str | Path, timeout: float = 60.0) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        self.socket_path = Path(socket_path)
        self.timeout = float(timeout)
        self._registered: dict[str, _Registration] = {}

    # --- transport ------------------------------------------------------------------------

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        path = check_socket_path(self.socket_path)
        if not path.exists():
            raise TrainerError(f"no trainer socket at {path} (is `osml trainer` running?)")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(min(self.timeout, 5.0))
            try:
                sock.connect(str(path))
            except TimeoutError as exc:
                raise TrainerError(
                    f"trainer at {path} did not accept the connection in time"
                ) from exc
            except FileNotFoundError as exc:
                raise TrainerError(
                    f"no trainer socket at {path} (is `osml trainer` running?)"
                ) from exc
            except ConnectionRefusedError as exc:
                raise TrainerError(
                    f"trainer at {path} refused the connection (not running?)"
                ) from exc
            except OSError as exc:
                raise TrainerError(
                    f"cannot connect to the trainer at {path}: {exc.strerror or exc}"
                ) from exc
            sock.settimeout(self.timeout)
            send_msg(sock, {"v": PROTOCOL_VERSION, "op": op, **fields})
            try:
                reply = recv_msg(sock)
            except TrainerError as exc:
                raise TrainerError(f"trainer {op}: {exc}") from exc
        finally:
            sock.close()
        ok = reply.get("ok")
        if ok is False:
            error = reply.get("error")
            raise TrainerError(
                f"trainer {op} failed: {error if isinstance(error, str) else 'no reason given'}"
            )
        if ok is not True:
            raise TrainerError(f"trainer {op}: malformed reply (no ok flag)")
        return reply

    # --- operations ---------------------------------------------------------------------

    def ping(self) -> bool:
        """True if a trainer answers on the socket, False if none does."""
        try:
            self._call("ping")
        except TrainerError:
            return False
        return True

    def init_agent(
        self,
        *,
        agent_id: str,
        context: str,
        architecture: str,
        window: int,
        n_features: int,
        embedding_dim: int,
        seed: int,
        train_data: np.ndarray,
        anchor: np.ndarray,
        settings: dict[str, object] | None = None,
        rescale: bool = False,
    ) -> int:
        """Register the agent (idempotent); returns the model version the trainer holds (0 if new).

        ``train_data`` is the agent's (steps, n_features) training series (it fixes the input
        normalisation of a new encoder); ``anchor`` its context anchor, shape (embedding_dim,).
        ``settings`` are :class:`osml.trainer.TrainerSettings` fields. With ``rescale`` an agent
        that is already registered has its input normalisation set afresh from ``train_data``
        (a live agent, whose first steps may not be typical of its stream, does this as its
        data grows); the next model exported carries it.
        """
        reply = self._call(
            "init",
            agent_id=agent_id,
            context=context,
            architecture=architecture,
            window=window,
            n_features=n_features,
            embedding_dim=embedding_dim,
            seed=seed,
            train_data=_pack("train_data", train_data),
            anchor=_pack("anchor", anchor),
            settings=dict(settings or {}),
            rescale=rescale,
        )
        version = reply.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise TrainerError(f"trainer init: malformed reply (version {version!r})")
        self._registered[agent_id] = _Registration(
            context, architecture, window, n_features, embedding_dim
        )
        return version

    def initial_model(
        self, agent_id: str, windows: np.ndarray, version: int
    ) -> tuple[bytes, ModelCard]:
        """The current weights exported as model ``version``, parity-checked on ``windows``."""
        reg = self._registration(agent_id)
        reply = self._call(
            "initial_model",
            agent_id=agent_id,
            context=reg.context,
            windows=_pack("windows", windows),
            version=version,
        )
        model, card = self._model(reply, "initial_model", agent_id, version)
        return model, card

    def train(
        self, agent_id: str, round: int, windows: np.ndarray, targets: np.ndarray, version: int
    ) -> tuple[bytes, ModelCard, dict[str, float]]:
        """One round toward the osmosis ``targets``, exported as model ``version``.

        Returns the model bytes, its card and the round's mean losses (``align``, ``ssl``).
        """
        reg = self._registration(agent_id)
        reply = self._call(
            "train",
            agent_id=agent_id,
            context=reg.context,
            round=round,
            windows=_pack("windows", windows),
            targets=_pack("targets", targets),
            version=version,
        )
        model, card = self._model(reply, "train", agent_id, version)
        losses = reply.get("losses")
        if not isinstance(losses, dict) or not all(
            isinstance(k, str)
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            for k, v in losses.items()
        ):
            raise TrainerError("trainer train: malformed reply (losses)")
        return model, card, {k: float(v) for k, v in losses.items()}

    # --- checks ---------------------------------------------------------------------------

    def _registration(self, agent_id: str) -> _Registration:
        try:
            return self._registered[agent_id]
        except KeyError:
            raise TrainerError(
                f"agent {agent_id!r} is not registered with this client; call init_agent first"
            ) from None

    def _model(
        self, reply: dict[str, Any], op: str, agent_id: str, version: int
    ) -> tuple[bytes, ModelCard]:
        model, card_json = reply.get("model"), reply.get("card")
        if not isinstance(model, bytes) or not isinstance(card_json, str):
            raise TrainerError(f"trainer {op}: malformed reply (model or card missing)")
        try:
            card = ModelCard.from_json(card_json, where="card from the trainer")
        except ModelError as exc:
            raise TrainerError(f"trainer {op}: {exc}") from exc
        # The model itself is verified where it is installed (OnnxEncoder.from_bytes); here the
        # trainer's answer must match what was asked of it.
        reg = self._registered[agent_id]
        want = (version, reg.architecture, reg.window, reg.n_features, reg.embedding_dim)
        got = (card.version, card.architecture, card.window, card.n_features, card.embedding_dim)
        if got != want:
            raise ModelError(
                f"trainer {op}: model card "
                f"(version, architecture, window, n_features, embedding_dim) "
                f"= {got}, expected {want}"
            )
        return model, card
