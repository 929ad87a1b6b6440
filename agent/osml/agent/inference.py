"""Encoder inference on the device: onnxruntime only (never torch).

:class:`OnnxEncoder` wraps one immutable model (bytes + card + session). Swapping models is
replacing the reference to an ``OnnxEncoder``: building a session takes about a millisecond, and
a call that already holds the old one finishes on it, so inference never waits for a swap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from osml.agent.modelcard import ModelCard, read_model, sha256_hex
from osml.errors import ModelError

__all__ = ["OnnxEncoder"]


def _session(model: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelError(f"onnxruntime cannot load the model: {exc}") from exc


@dataclass(frozen=True, eq=False)
class OnnxEncoder:
    """A verified ONNX encoder ready to embed windows."""

    card: ModelCard
    model_bytes: bytes
    session: ort.InferenceSession

    @classmethod
    def from_bytes(
        cls,
        model: bytes,
        card: ModelCard,
        threads: int = 1,
        *,
        expect: tuple[int, int, int] | None = None,
    ) -> OnnxEncoder:
        """Verify ``model`` against its ``card`` (sha256, input/output names, a probe batch's
        output shape) and, with ``expect``, the card's (window, n_features, embedding_dim)
        against what the caller needs: the one place a model is checked before use."""
        if sha256_hex(model) != card.sha256:
            raise ModelError(f"model v{card.version}: sha256 does not match its card")
        got = (card.window, card.n_features, card.embedding_dim)
        if expect is not None and got != tuple(expect):
            raise ModelError(
                f"model v{card.version} is for (window, features, dim) {got}, "
                f"this agent needs {tuple(expect)}"
            )
        session = _session(model, threads)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if [i.name for i in inputs] != [card.input_name] or [o.name for o in outputs] != [
            card.output_name
        ]:
            raise ModelError(
                f"model v{card.version}: expects input '{card.input_name}' and output "
                f"'{card.output_name}', the graph has {[i.name for i in inputs]} -> "
                f"{[o.name for o in outputs]}"
            )
        enc = cls(card, model, session)
        # A probe batch of 2 catches a graph whose batch dimension was frozen at export.
        try:
            probe = enc.encode(np.zeros((2, card.window, card.n_features), dtype=np.float32))
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime's own error types
            raise ModelError(
                f"model v{card.version} does not run on windows of shape "
                f"(2, {card.window}, {card.n_features}): {exc}"
            ) from exc
        if probe.shape != (2, card.embedding_dim):
            raise ModelError(
                f"model v{card.version}: output shape {probe.shape}, "
                f"card says (2, {card.embedding_dim})"
            )
        return enc

    @classmethod
    def load(cls, path: str | os.PathLike[str], threads: int = 1) -> OnnxEncoder:
        """The model at ``path`` and its card, verified.

        See :func:`osml.agent.modelcard.read_model` for the files read.
        """
        model, card = read_model(path)
        return cls.from_bytes(model, card, threads)

    def encode(self, windows: np.ndarray, batch: int = 4096) -> np.ndarray:
        """(n, window, features) -> (n, embedding_dim) float32."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != (self.card.window, self.card.n_features):
            raise ModelError(
                f"model v{self.card.version} takes windows of shape (n, {self.card.window}, "
                f"{self.card.n_features}), got {x.shape}"
            )
        parts = [
            self.session.run([self.card.output_name], {self.card.input_name: x[i : i + batch]})[0]
            for i in range(0, len(x), batch)
        ]
        out = np.concatenate(parts) if parts else np.zeros((0, self.card.embedding_dim), np.float32)
        return out.astype(np.float32, copy=False)

    @property
    def version(self) -> int:
        return self.card.version
