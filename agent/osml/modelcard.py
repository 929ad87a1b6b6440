"""Model cards: the small JSON file that travels with every encoder's ONNX file.

A card says what the model is (architecture, input shape, embedding size, version) and pins the
exact bytes with a sha256, so an agent can refuse a model that was truncated, swapped or built for
another window. Torch-free: the agent reads cards, the trainer writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from osml.errors import ModelError

__all__ = ["ModelCard", "card_path", "read_card", "sha256_hex", "write_atomic", "write_model"]

CARD_FORMAT = 1


@dataclass(frozen=True)
class ModelCard:
    version: int
    architecture: str
    window: int
    n_features: int
    embedding_dim: int
    sha256: str
    input_name: str = "windows"
    output_name: str = "embeddings"
    agent: str = ""
    context: str = ""
    created_by: str = "osml"
    card_format: int = CARD_FORMAT

    def __post_init__(self) -> None:
        for key in ("version", "window", "n_features", "embedding_dim"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "version" else 1):
                raise ModelError(f"model card: {key} must be a positive integer, got {value!r}")
        if len(self.sha256) != 64:
            raise ModelError("model card: sha256 must be 64 hex digits")

    @property
    def input_shape(self) -> tuple[str, int, int]:
        return ("batch", self.window, self.n_features)

    def to_json(self) -> str:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "card") -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ModelError(f"{where}: expected a JSON object")
        data.pop("input_shape", None)
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ModelError(f"{where}: unknown keys {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelError(f"{where}: {exc}") from exc


def card_path(model_path: str | os.PathLike[str]) -> Path:
    """``encoder.onnx`` -> ``encoder.card.json``."""
    p = Path(model_path)
    return p.with_name(p.stem + ".card.json")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_model(path: str | os.PathLike[str], model_bytes: bytes, card: ModelCard) -> None:
    """Write the model, then its card, each atomically. A reader that checks the card's sha256
    against the model never accepts a half-updated pair."""
    if card.sha256 != sha256_hex(model_bytes):
        raise ModelError("card sha256 does not match the model bytes")
    write_atomic(path, model_bytes)
    write_atomic(card_path(path), card.to_json().encode())


def read_card(model_path: str | os.PathLike[str]) -> ModelCard:
    cp = card_path(model_path)
    try:
        text = cp.read_text()
    except OSError as exc:
        raise ModelError(f"{cp}: cannot read model card ({exc.strerror})") from exc
    return ModelCard.from_json(text, where=str(cp))
