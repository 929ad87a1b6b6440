"""Model cards: the small JSON file that travels with every encoder's ONNX file.

A card says what the model is (architecture, input shape, embedding size, version) and pins the
exact bytes with a sha256, so an agent can refuse a model that was truncated, swapped or built for
another window. Torch-free: the agent reads cards, the trainer writes them.

On disk a model is the pair ``encoder.onnx`` + ``encoder.card.json``. :func:`write_model` makes the
card's rename the single commit point, so a SIGKILL (or power cut) at any moment leaves a pair
that verifies - the old one or the new one:

1. the new bytes go to a staged file named after their hash, ``encoder.<sha256[:16]>.onnx``;
2. the new card replaces the old one (commit: from here on the card names the staged bytes);
3. the staged file is renamed over ``encoder.onnx``, and stale staged or temp files are removed.

Until step 3 the old ``encoder.onnx`` stays where it was. :func:`read_model` takes the bytes that
match the card: ``encoder.onnx``, or the staged file when a writer was stopped between 2 and 3.
Every file goes through :func:`osml.files.write_atomic` (temp file, fsync, rename, fsync of the
directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from osml.errors import ModelError
from osml.files import fsync_dir, write_atomic

__all__ = [
    "ModelCard",
    "card_path",
    "check_owner",
    "read_card",
    "read_model",
    "sha256_hex",
    "staged_path",
    "write_model",
]

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
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < (0 if key == "version" else 1)
            ):
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


def staged_path(model_path: str | os.PathLike[str], sha256: str) -> Path:
    """``encoder.onnx`` + sha ``ab12...`` -> ``encoder.ab12....onnx`` (16 hex digits)."""
    p = Path(model_path)
    return p.with_name(f"{p.stem}.{sha256[:16]}{p.suffix}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stale_files(model_path: Path) -> list[Path]:
    """Staged models and temp files left by interrupted :func:`write_model` calls.

    Only the ones for ``model_path``.
    """
    staged = re.escape(model_path.stem) + r"\.[0-9a-f]{16}" + re.escape(model_path.suffix)
    written = "|".join([staged, re.escape(model_path.name), re.escape(card_path(model_path).name)])
    staged_re, temp_re = (
        re.compile(staged),
        re.compile(rf"\.(?:{written})\..+\.tmp"),
    )  # write_atomic's temp names
    return [
        p
        for p in model_path.parent.iterdir()
        if staged_re.fullmatch(p.name) or temp_re.fullmatch(p.name)
    ]


def write_model(path: str | os.PathLike[str], model_bytes: bytes, card: ModelCard) -> None:
    """Install ``model_bytes`` and ``card`` at ``path`` so that the pair on disk always verifies.

    The card's rename is the commit point (see the module docstring): killed before it, a reader
    finds the previous pair; killed after it, the new one.
    """
    if card.sha256 != sha256_hex(model_bytes):
        raise ModelError("card sha256 does not match the model bytes")
    target = Path(path)
    staged = staged_path(target, card.sha256)
    write_atomic(staged, model_bytes)
    write_atomic(card_path(target), card.to_json().encode())  # commit
    os.replace(staged, target)
    fsync_dir(target.parent)
    for stale in _stale_files(target):
        stale.unlink(missing_ok=True)


def check_owner(card: ModelCard, agent: str, context: str, where: str | os.PathLike[str]) -> None:
    """ModelError (one line naming ``where``) if ``card`` says it belongs to another agent or
    context. An empty ``agent`` or ``context`` on the card claims nothing and passes."""
    if (card.agent or agent, card.context or context) != (agent, context):
        raise ModelError(
            f"{where}: model v{card.version} belongs to agent {card.agent!r} in context "
            f"{card.context!r}, not {agent!r} in {context!r}; move the model and its card out of "
            "the state directory to start from the initial model, or give each agent its own "
            "agent.state_dir"
        )


def read_card(model_path: str | os.PathLike[str]) -> ModelCard:
    cp = card_path(model_path)
    try:
        text = cp.read_text()
    except OSError as exc:
        raise ModelError(f"{cp}: cannot read model card ({exc.strerror})") from exc
    return ModelCard.from_json(text, where=str(cp))


def read_model(model_path: str | os.PathLike[str]) -> tuple[bytes, ModelCard]:
    """The card at ``model_path`` and the model bytes it pins (sha256 checked).

    Looks at ``model_path`` first, then at the staged file a :func:`write_model` stopped after its
    commit leaves behind, then at ``model_path`` again (a writer may have finished in between).
    """
    path = Path(model_path)
    card = read_card(path)
    error: OSError | None = None
    found = False
    for candidate in (path, staged_path(path, card.sha256), path):
        try:
            data = candidate.read_bytes()
        except OSError as exc:
            error = error or exc
            continue
        found = True
        if sha256_hex(data) == card.sha256:
            return data, card
    if not found:
        assert error is not None
        raise ModelError(f"{path}: cannot read model ({error.strerror})") from error
    raise ModelError(f"model v{card.version}: sha256 of {path} does not match its card")
