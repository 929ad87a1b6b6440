"""Where an agent's series come from: the data-source spec, parsed once into a typed value.

Three kinds, written ``<kind>:<target>`` in an agent config's ``[data] source``:

* ``csv:FILE``        the agent's own series, one column per feature (``[data] test`` optionally
                      names a held-out file of the same layout);
* ``paper:DIR``       a directory in the paper's format (``train_data.csv`` and ``test_data.csv``
                      with ``Agent<ID>[<i>]`` columns); the agent reads its own columns;
* ``generated:NAME``  a synthetic dataset (``simple``, ``complex``, either with ``+wobble``),
                      generated from ``[data] seed``.

The command line's ``--data`` is shorter: ``generated:NAME`` or a paper directory
(:meth:`SourceSpec.from_cli`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from osml.agent.data import GENERATED_SPECS, load_dataset, read_agent_csv, read_paper_dir

if TYPE_CHECKING:  # config imports this module to check its [data] section
    from osml.agent.config import DataSection

__all__ = ["GENERATORS", "KINDS", "SourceKind", "SourceSpec", "load_series", "parse_source"]

SourceKind = Literal["csv", "paper", "generated"]
KINDS: tuple[SourceKind, ...] = ("csv", "paper", "generated")
GENERATORS = tuple(spec.removeprefix("generated:") for spec in GENERATED_SPECS)
"""The synthetic datasets ``generated:`` may name."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed data source: ``kind`` and its ``target`` (a file, a directory or a generator)."""

    kind: SourceKind
    target: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS or not self.target:
            raise ValueError(
                f"{self.kind}:{self.target!r} not understood; "
                "use csv:FILE, paper:DIR or generated:simple|complex"
            )
        if self.kind == "generated" and self.target not in GENERATORS:
            raise ValueError(
                f"unknown generator {self.target!r}; use generated:simple or generated:complex"
            )

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"

    @classmethod
    def from_cli(cls, data_spec: str) -> SourceSpec:
        """``--data`` of ``osml simulate``/``osml run`` as an agent's source: ``generated:NAME``
        stays as it is, anything else is a paper directory (made absolute)."""
        if data_spec.startswith("generated:"):
            return parse_source(data_spec)
        return cls("paper", str(Path(data_spec).resolve()))

    def relative_to(self, base: Path) -> SourceSpec:
        """File and directory targets that are relative, resolved against ``base``."""
        if self.kind in ("csv", "paper") and not Path(self.target).is_absolute():
            return SourceSpec(self.kind, str(base / self.target))
        return self


def parse_source(spec: str) -> SourceSpec:
    """``"csv:/data/a.csv"`` -> ``SourceSpec("csv", "/data/a.csv")``; ValueError if malformed."""
    if not isinstance(spec, str):
        raise ValueError(f"expected a string like csv:FILE, got {spec!r}")
    kind, _, target = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(
            f"{spec!r} not understood; use csv:FILE, paper:DIR or generated:simple|complex"
        )
    return SourceSpec(kind, target)


def load_series(data: DataSection, agent_id: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The agent's own (train, test) series from its config's ``[data]`` section.

    ``data.agent`` (when set) names the columns to read in a paper directory or generated
    dataset; otherwise the agent's own id does. A csv source has a test series only when
    ``data.test`` names one.
    """
    source = parse_source(data.source)
    if source.kind == "csv":
        train = read_agent_csv(source.target)
        test = read_agent_csv(data.test) if data.test else None
        return train, test
    dataset = (
        read_paper_dir(source.target)
        if source.kind == "paper"
        else load_dataset(str(source), seed=data.seed)
    )
    who = data.agent or agent_id
    return np.asarray(dataset[who].train), np.asarray(dataset[who].test)
