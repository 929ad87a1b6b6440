"""A small labelled dataset for tests of the downstream probes, and a writer for it.

Three classes come in bouts of 15-40 steps (like activities in a sensor stream). Agents ``a``
and ``b`` both see the class, through different offsets, gains and noise, on top of a shared
smooth signal; agent ``n`` is noise with nothing to do with the class. The train and test rows
are one continuous run, split in time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from osml.agent.data import (
    LABEL_COLUMN,
    TEST_FILE,
    TEST_LABELS_FILE,
    TRAIN_FILE,
    TRAIN_LABELS_FILE,
    AgentData,
    Dataset,
)

__all__ = ["labelled_dataset", "write_paper_dir"]


def _bouts(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    labels: list[int] = []
    while len(labels) < n:
        labels += [int(rng.integers(classes))] * int(rng.integers(15, 41))
    return np.asarray(labels[:n], dtype=np.int64)


def labelled_dataset(n_train: int = 300, n_test: int = 200, seed: int = 0) -> Dataset:
    """Agents ``a`` (2 features), ``b`` (1) and ``n`` (1) with 3 labelled classes."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = _bouts(n, 3, rng)
    s = np.convolve(rng.standard_normal(n + 9), np.ones(10) / np.sqrt(10), mode="valid")
    level = np.array([-1.5, 0.0, 1.5])[y]
    a = np.stack([s + level, 0.5 * s - level], axis=1) + 0.3 * rng.standard_normal((n, 2))
    b = (-2.0 * s + 3.0 * level + 0.5 * rng.standard_normal(n))[:, None]
    noise = rng.standard_normal((n, 1))
    agents = tuple(
        AgentData(aid, x[:n_train], x[n_train:]) for aid, x in (("a", a), ("b", b), ("n", noise))
    )
    return Dataset("labelled", agents, train_labels=y[:n_train], test_labels=y[n_train:])


def write_paper_dir(ds: Dataset, root: Path) -> Path:
    """``ds`` as a paper-format directory (with its label files when it has labels)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, split in ((TRAIN_FILE, "train"), (TEST_FILE, "test")):
        header = [f"Agent{a.agent_id}[{i}]" for a in ds for i in range(a.n_features)]
        rows = np.concatenate([getattr(a, split) for a in ds], axis=1)
        lines = [",".join(header), *(",".join(f"{v:.6g}" for v in row) for row in rows)]
        (root / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name, labels in ((TRAIN_LABELS_FILE, ds.train_labels), (TEST_LABELS_FILE, ds.test_labels)):
        if labels is not None:
            text = "\n".join([LABEL_COLUMN, *map(str, labels.tolist())]) + "\n"
            (root / name).write_text(text, encoding="utf-8")
    return root
