"""Per-agent time series: loading, validation and windowing.

Each agent of an Osmotic Learning run owns a private time series of ``T`` steps by ``F`` features.
Rows of different agents are aligned by logical step index: row ``t`` of every agent describes the
same moment. A :class:`Dataset` is the set of agents of one experiment, each with a training and a
held-out test series.

Files are read with the stdlib :mod:`csv` module and checked strictly: every problem raises
:class:`~osml.errors.DataError` with a message naming the file and, where it applies, the 1-based
line number and the column.

Two on-disk formats are supported:

* the paper format (:func:`read_paper_csv`, :func:`read_paper_dir`): one CSV per split holding every
  agent, one column per feature named ``Agent<ID>[<i>]``;
* a plain per-agent CSV (:func:`read_agent_csv`): a header of feature names, then numeric rows.

A paper-format directory may also hold labels, one per step, shared by every agent (a moment
has one label): ``train_labels.csv`` and ``test_labels.csv`` beside the data files, each a
header ``label`` and then one integer per row, row ``t`` labelling step ``t`` of the matching
data file (:func:`read_labels_csv`). Both files or neither. They are never sent to an agent;
the report uses them for its downstream probes (:mod:`osml.ops.downstream`).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from osml.errors import DataError

__all__ = [
    "GENERATED_SPECS",
    "LABEL_COLUMN",
    "TEST_FILE",
    "TEST_LABELS_FILE",
    "TRAIN_FILE",
    "TRAIN_LABELS_FILE",
    "AgentData",
    "Dataset",
    "check_min_rows",
    "load_dataset",
    "read_agent_csv",
    "read_labels_csv",
    "read_paper_csv",
    "read_paper_dir",
    "window_steps",
    "windows",
]

TRAIN_FILE = "train_data.csv"
TEST_FILE = "test_data.csv"
TRAIN_LABELS_FILE = "train_labels.csv"
TEST_LABELS_FILE = "test_labels.csv"
LABEL_COLUMN = "label"
GENERATED_SPECS = (
    "generated:simple",
    "generated:complex",
    "generated:simple+wobble",
    "generated:complex+wobble",
)

_PAPER_COLUMN = re.compile(r"Agent([A-Za-z0-9]+)\[([0-9]+)\]")

StrPath = str | PathLike[str]


def _frozen_float32(name: str, value: object) -> np.ndarray:
    """A read-only float32 (T, F) copy of ``value``; DataError if it is not 2-D or not finite."""
    try:
        arr = np.array(value, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: not a numeric array ({exc})") from exc
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D array (steps, features), got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise DataError(f"{name}: has no features (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise DataError(f"{name}: contains NaN or infinite values")
    arr.setflags(write=False)
    return arr


def _frozen_labels(name: str, value: object, rows: int) -> np.ndarray:
    """A read-only int64 (T,) copy of ``value``; DataError unless it is ``rows`` whole numbers."""
    try:
        arr = np.array(value, copy=True)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: not an array of labels ({exc})") from exc
    if arr.shape != (rows,):
        raise DataError(f"{name}: expected {rows} labels (one per row), got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise DataError(f"{name}: labels must be integers")
    labels = arr.astype(np.int64)
    labels.setflags(write=False)
    return labels


@dataclass(frozen=True)
class AgentData:
    """The private series of one agent: ``train`` and ``test`` are float32 arrays (T, F).

    Both arrays are copied on construction and made read-only, so an instance never changes.
    """

    agent_id: str
    train: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.agent_id, str) or not self.agent_id:
            raise DataError(f"agent id must be a non-empty string, got {self.agent_id!r}")
        train = _frozen_float32(f"agent {self.agent_id!r} train", self.train)
        test = _frozen_float32(f"agent {self.agent_id!r} test", self.test)
        if train.shape[1] != test.shape[1]:
            raise DataError(
                f"agent {self.agent_id!r}: train has {train.shape[1]} features "
                f"but test has {test.shape[1]}"
            )
        # frozen dataclass: __setattr__ is blocked, so store the normalised arrays directly
        object.__setattr__(self, "train", train)
        object.__setattr__(self, "test", test)

    @property
    def n_features(self) -> int:
        """Number of features F."""
        return int(self.train.shape[1])


@dataclass(frozen=True)
class Dataset:
    """The agents of one experiment; every agent has the same number of train and test rows.

    ``train_source`` and ``test_source`` describe where the rows came from (file paths for data read
    from disk); error messages use them. ``train_labels`` and ``test_labels``, when given, hold one
    integer label per row (step), shared by every agent; the report's probes use them.
    """

    name: str
    agents: tuple[AgentData, ...]
    train_source: str = ""
    test_source: str = ""
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        agents = tuple(self.agents)
        if not agents:
            raise DataError(f"dataset {self.name!r} has no agents")
        for agent in agents:
            if not isinstance(agent, AgentData):
                raise DataError(f"dataset {self.name!r}: expected AgentData, got {agent!r}")
        seen: set[str] = set()
        for agent in agents:
            if agent.agent_id in seen:
                raise DataError(f"dataset {self.name!r}: duplicate agent id {agent.agent_id!r}")
            seen.add(agent.agent_id)
        first = agents[0]
        for agent in agents[1:]:
            for split, rows, ref in (
                ("train", len(agent.train), len(first.train)),
                ("test", len(agent.test), len(first.test)),
            ):
                if rows != ref:
                    raise DataError(
                        f"dataset {self.name!r}: agent {agent.agent_id!r} has {rows} {split} "
                        f"rows but agent {first.agent_id!r} has {ref}; agents must be aligned"
                    )
        object.__setattr__(self, "agents", agents)
        for split, rows in (("train", len(first.train)), ("test", len(first.test))):
            value = getattr(self, f"{split}_labels")
            if value is not None:
                name = f"dataset {self.name!r} {split} labels"
                object.__setattr__(self, f"{split}_labels", _frozen_labels(name, value, rows))

    @property
    def labelled(self) -> bool:
        """True when the test rows have labels (what the report's probes need)."""
        return self.test_labels is not None

    @property
    def ids(self) -> tuple[str, ...]:
        """Agent ids, in file order."""
        return tuple(agent.agent_id for agent in self.agents)

    @property
    def n_train(self) -> int:
        """Number of training rows (shared by every agent)."""
        return int(self.agents[0].train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test rows (shared by every agent)."""
        return int(self.agents[0].test.shape[0])

    def __getitem__(self, agent_id: str) -> AgentData:
        """The agent called ``agent_id``; DataError listing the valid ids otherwise."""
        for agent in self.agents:
            if agent.agent_id == agent_id:
                return agent
        raise DataError(
            f"dataset {self.name!r} has no agent {agent_id!r}; agents are {', '.join(self.ids)}"
        )

    def __contains__(self, agent_id: object) -> bool:
        return any(agent.agent_id == agent_id for agent in self.agents)

    def __iter__(self) -> Iterator[AgentData]:
        return iter(self.agents)

    def __len__(self) -> int:
        return len(self.agents)

    def select(self, ids: Sequence[str]) -> Dataset:
        """A dataset with only the agents ``ids``, in the order given."""
        if isinstance(ids, str):
            # a bare string is a Sequence[str] of characters, which is never what is meant
            ids = [ids]
        unknown = [agent_id for agent_id in ids if agent_id not in self]
        if unknown:
            raise DataError(
                f"dataset {self.name!r} has no agent(s) {', '.join(map(repr, unknown))}; "
                f"valid ids are {', '.join(self.ids)}"
            )
        if len(set(ids)) != len(ids):
            raise DataError(f"dataset {self.name!r}: agent ids selected twice in {list(ids)}")
        return Dataset(
            name=self.name,
            agents=tuple(self[agent_id] for agent_id in ids),
            train_source=self.train_source,
            test_source=self.test_source,
            train_labels=self.train_labels,
            test_labels=self.test_labels,
        )


# --------------------------------------------------------------------------------------- reading


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header cells and ``(line number, cells)`` data rows of a CSV file.

    Blank lines at the end of the file are ignored; a blank line followed by data is an error.
    """
    try:
        # utf-8-sig: tolerate the byte-order mark spreadsheet programs write
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            header: list[str] | None = None
            rows: list[tuple[int, list[str]]] = []
            blank_line: int | None = None
            for cells in reader:
                line = reader.line_num
                if not cells:
                    if blank_line is None:
                        blank_line = line
                    continue
                if blank_line is not None:
                    where = "before the header" if header is None else "between data rows"
                    raise DataError(f"{path}: line {blank_line}: blank line {where}")
                if header is None:
                    header = cells
                else:
                    rows.append((line, cells))
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc
    if header is None:
        raise DataError(f"{path}: file is empty (expected a header row)")
    if not rows:
        raise DataError(f"{path}: has a header but no data rows")
    return header, rows


def _parse_cell(path: Path, line: int, column: str, cell: str) -> float:
    text = cell.strip()
    if not text:
        raise DataError(f"{path}: line {line}, column {column!r}: empty cell")
    # float() also accepts "1_000"; digit separators are never meant in a data file
    try:
        if "_" in text:
            raise ValueError(text)
        value = float(text)
    except ValueError:
        raise DataError(f"{path}: line {line}, column {column!r}: not a number: {cell!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{path}: line {line}, column {column!r}: value {cell!r} is not finite")
    return value


def _to_matrix(path: Path, header: list[str], rows: list[tuple[int, list[str]]]) -> np.ndarray:
    """Check every data row against ``header`` and convert it to a float32 (T, len(header))."""
    n_cols = len(header)
    out = np.empty((len(rows), n_cols), dtype=np.float64)
    for r, (line, cells) in enumerate(rows):
        if len(cells) != n_cols:
            raise DataError(f"{path}: line {line}: has {len(cells)} cells, the header has {n_cols}")
        for c, cell in enumerate(cells):
            out[r, c] = _parse_cell(path, line, header[c], cell)
    with np.errstate(over="ignore"):  # overflow is reported below, with line and column
        matrix = out.astype(np.float32)
    bad = np.argwhere(~np.isfinite(matrix))
    if bad.size:
        r, c = (int(i) for i in bad[0])
        raise DataError(
            f"{path}: line {rows[r][0]}, column {header[c]!r}: value {rows[r][1][c].strip()!r} "
            f"overflows float32"
        )
    return matrix


def _check_unique(path: Path, header: list[str]) -> None:
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise DataError(f"{path}: line 1: duplicate column {column!r}")
        seen.add(column)


def read_paper_csv(path: StrPath) -> dict[str, np.ndarray]:
    """Read a paper-format CSV into ``{agent id: float32 array (T, F)}``, agents in header order.

    Columns are named ``Agent<ID>[<i>]``; the columns of one agent may appear in any order and
    interleaved with other agents' columns, but their indices must be exactly ``0..F-1``.
    """
    path = Path(path)
    header, rows = _read_rows(path)
    header = [column.strip() for column in header]
    _check_unique(path, header)
    # agent id -> {feature index: column position}
    layout: dict[str, dict[int, int]] = {}
    for position, column in enumerate(header):
        match = _PAPER_COLUMN.fullmatch(column)
        if match is None:
            raise DataError(
                f"{path}: line 1, column {position + 1} {column!r}: "
                f"expected a name like 'Agent0[0]' (Agent<ID>[<feature index>])"
            )
        agent_id, index = match.group(1), int(match.group(2))
        layout.setdefault(agent_id, {})[index] = position
    for agent_id, features in layout.items():
        expected = set(range(len(features)))
        if set(features) != expected:
            missing = sorted(expected - set(features))
            missing_names = ", ".join(f"Agent{agent_id}[{i}]" for i in missing)
            raise DataError(
                f"{path}: line 1: agent {agent_id!r} has feature indices "
                f"{sorted(features)}; they must be 0..{len(features) - 1} without gaps "
                f"(missing {missing_names})"
            )
    matrix = _to_matrix(path, header, rows)
    result: dict[str, np.ndarray] = {}
    for agent_id, features in layout.items():
        order = [features[i] for i in range(len(features))]
        result[agent_id] = np.ascontiguousarray(matrix[:, order])
    return result


def read_agent_csv(path: StrPath) -> np.ndarray:
    """Read a plain per-agent CSV (header of feature names, numeric rows) into float32 (T, F)."""
    path = Path(path)
    header, rows = _read_rows(path)
    header = [column.strip() for column in header]
    for position, column in enumerate(header):
        if not column:
            raise DataError(f"{path}: line 1, column {position + 1}: empty column name")
    _check_unique(path, header)
    return _to_matrix(path, header, rows)


def read_labels_csv(path: StrPath) -> np.ndarray:
    """Read a labels file (a header ``label``, then one integer per row) into int64 (T,)."""
    path = Path(path)
    header, rows = _read_rows(path)
    if [cell.strip() for cell in header] != [LABEL_COLUMN]:
        raise DataError(
            f"{path}: line 1: expected the single column {LABEL_COLUMN!r}, got {header!r}"
        )
    labels = np.empty(len(rows), dtype=np.int64)
    for r, (line, cells) in enumerate(rows):
        if len(cells) != 1:
            raise DataError(f"{path}: line {line}: has {len(cells)} cells, expected 1 label")
        text = cells[0].strip()
        try:
            if "_" in text:  # int() reads "1_000"; digit separators are never meant here
                raise ValueError(text)
            labels[r] = int(text)
        except (ValueError, OverflowError):
            raise DataError(f"{path}: line {line}: label {cells[0]!r} is not an integer") from None
    return labels


def _read_labels(directory: Path, n_train: int, n_test: int) -> tuple[np.ndarray | None, ...]:
    paths = (directory / TRAIN_LABELS_FILE, directory / TEST_LABELS_FILE)
    present = [p.exists() for p in paths]
    if not any(present):
        return None, None
    if not all(present):
        have, lack = (paths[0], paths[1]) if present[0] else (paths[1], paths[0])
        raise DataError(f"{have} has no partner: add {lack.name} too, or remove both label files")
    out = []
    for label_path, data_file, rows in zip(paths, (TRAIN_FILE, TEST_FILE), (n_train, n_test)):
        labels = read_labels_csv(label_path)
        if len(labels) != rows:
            raise DataError(
                f"{label_path}: has {len(labels)} labels but {directory / data_file} has "
                f"{rows} rows; one label per row is needed"
            )
        out.append(labels)
    return tuple(out)


def read_paper_dir(path: StrPath, name: str | None = None) -> Dataset:
    """Read ``train_data.csv`` and ``test_data.csv`` of a paper-format directory.

    Both files must hold the same agents with the same feature counts; the agent order is the
    order of the training file. ``name`` defaults to the directory name. ``train_labels.csv``
    and ``test_labels.csv``, when there, become the dataset's labels.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected {TRAIN_FILE} and {TEST_FILE})")
    train_path, test_path = directory / TRAIN_FILE, directory / TEST_FILE
    train = read_paper_csv(train_path)
    test = read_paper_csv(test_path)
    if set(train) != set(test):
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        raise DataError(
            f"{train_path} and {test_path} hold different agents: "
            f"only in train: {only_train or 'none'}, only in test: {only_test or 'none'}"
        )
    for agent_id in train:
        f_train, f_test = train[agent_id].shape[1], test[agent_id].shape[1]
        if f_train != f_test:
            raise DataError(
                f"agent {agent_id!r} has {f_train} features in {train_path} "
                f"but {f_test} in {test_path}"
            )
    agents = tuple(AgentData(agent_id, train[agent_id], test[agent_id]) for agent_id in train)
    n_train, n_test = len(agents[0].train), len(agents[0].test)
    train_labels, test_labels = _read_labels(directory, n_train, n_test)
    return Dataset(
        name=name if name is not None else directory.resolve().name,
        agents=agents,
        train_source=str(train_path),
        test_source=str(test_path),
        train_labels=train_labels,
        test_labels=test_labels,
    )


def load_dataset(spec: str, *, seed: int = 0) -> Dataset:
    """Load a dataset from a spec.

    ``generated:simple`` or ``generated:complex`` generate a synthetic dataset with ``seed``
    (see :func:`osml.agent.synthetic.generate`); anything else must be a directory in the paper
    format (with labels if it holds label files, see :func:`read_paper_dir`).
    """
    if spec.startswith("generated:"):
        # imported here: osml.agent.synthetic builds Dataset objects, so it imports this module
        from osml.agent.synthetic import generate, is_kind

        kind, plus, option = spec.removeprefix("generated:").partition("+")
        if is_kind(kind) and (not plus or option == "wobble"):
            return generate(kind, seed=seed, wobble=bool(plus))
        raise DataError(
            f"unknown generated dataset {spec!r}: use one of {', '.join(GENERATED_SPECS)}"
        )
    directory = Path(spec)
    if spec and directory.is_dir():
        return read_paper_dir(directory)
    reason = "is not a directory" if directory.exists() else "does not exist"
    raise DataError(
        f"unknown dataset {spec!r} ({reason}): use {' or '.join(GENERATED_SPECS)}, or a "
        f"directory holding {TRAIN_FILE} and {TEST_FILE} with Agent<ID>[<i>] columns"
    )


# ------------------------------------------------------------------------------------- windowing


def windows(series: np.ndarray, w: int) -> np.ndarray:
    """Sliding windows of ``w`` consecutive steps: (T, F) -> (T - w + 1, w, F) float32.

    Window ``k`` covers steps ``k .. k + w - 1`` and is labelled by its last step ``k + w - 1``
    (see :func:`window_steps`). The result is a **read-only strided view** of ``series`` (of a
    float32 copy when ``series`` is not float32), so it costs no memory; pass it through
    :func:`numpy.ascontiguousarray` when a contiguous, writable copy is needed.
    """
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)):
        raise ValueError(f"window length must be an int, got {w!r}")
    if w < 1:
        raise ValueError(f"window length must be at least 1, got {w}")
    arr = np.asarray(series, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"series must be 2-D (steps, features), got shape {arr.shape}")
    steps = arr.shape[0]
    if steps < w:
        raise DataError(f"windows of {w} steps need at least {w} rows, the series has {steps}")
    view = np.lib.stride_tricks.sliding_window_view(arr, int(w), axis=0)  # (T-w+1, F, w)
    view = view.transpose(0, 2, 1)  # (T-w+1, w, F)
    view.flags.writeable = False
    return view


def window_steps(n_steps: int, w: int) -> np.ndarray:
    """The step label of each window of :func:`windows`: ``[w - 1, w, ..., n_steps - 1]``."""
    if w < 1:
        raise ValueError(f"window length must be at least 1, got {w}")
    return np.arange(w - 1, n_steps, dtype=np.int64)


def check_min_rows(ds: Dataset, w: int) -> None:
    """Raise DataError unless every agent has at least ``w`` train rows and ``w`` test rows.

    The message names the source file (or the dataset) and the agent, and the rows needed.
    """
    if w < 1:
        raise ValueError(f"window length must be at least 1, got {w}")
    for split, rows, source in (
        ("train", ds.n_train, ds.train_source),
        ("test", ds.n_test, ds.test_source),
    ):
        if rows < w:
            where = source or f"dataset {ds.name!r} ({split})"
            raise DataError(
                f"{where}: agents {', '.join(ds.ids)} have {rows} {split} rows; "
                f"windows of {w} steps need at least {w} rows"
            )
