"""Run directories: write, read back and summarise what ``osml simulate`` produced. Torch-free.

A run directory holds::

    report.json             everything the simulation returned except the embeddings
    embeddings/<agent>.npy  each agent's final test embeddings, (steps, dim) float32
    similarity.png          final same-step strict alignment between agents   (needs matplotlib)
    alignment.png           strict and centered alignment per round, per pair  (needs matplotlib)

Every file is written atomically (temp file, fsync, rename), so a reader never sees half a file.
Plots are optional: without matplotlib (``pip install 'osml[plot]'``) they are skipped silently and
:func:`plots_available` says so.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from osml.errors import DataError
from osml.files import write_atomic

__all__ = [
    "ALIGNMENT_PLOT",
    "EMBEDDINGS_DIR",
    "PLOT_INSTALL_HINT",
    "REPORT_FILE",
    "SIMILARITY_PLOT",
    "load_run",
    "plots_available",
    "shared_pairs",
    "summary_table",
    "to_jsonable",
    "write_plots",
    "write_run",
]

REPORT_FILE = "report.json"
EMBEDDINGS_DIR = "embeddings"
SIMILARITY_PLOT = "similarity.png"
ALIGNMENT_PLOT = "alignment.png"
PLOT_INSTALL_HINT = "pip install 'osml[plot]'"

StrPath = str | os.PathLike[str]

# An agent id becomes a file name: keep it to characters that are safe on every file system and
# can never climb out of the embeddings directory.
_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


# ------------------------------------------------------------------------------------ JSON


def to_jsonable(value: Any, where: str = "report") -> Any:
    """A copy of ``value`` that :func:`json.dumps` accepts with ``allow_nan=False``.

    numpy scalars and arrays become Python numbers and lists, tuples become lists, dataclasses
    become dicts, mapping keys become strings, paths become strings, and non-finite floats become
    ``None`` (strict JSON has no NaN). Anything else raises TypeError naming where it was found.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), where)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{where}: cannot store a {type(value).__name__} in JSON")


# ------------------------------------------------------------------------------- write / load


def _check_agent_id(agent: str) -> str:
    if not isinstance(agent, str) or not _SAFE_ID.fullmatch(agent):
        raise DataError(
            f"agent id {agent!r} cannot be used as a file name "
            "(use letters, digits, '_', '-' and '.', not starting with '.' or '-')"
        )
    return agent


def write_run(out_dir: StrPath, result: Mapping[str, Any]) -> Path:
    """Write ``result`` (as returned by :func:`osml.ops.simulate.simulate`) to ``out_dir``.

    Writes ``report.json``, ``embeddings/<agent>.npy`` and, when matplotlib is installed, the two
    plots. Returns the directory. Files of an earlier run in the same directory are replaced.
    """
    directory = Path(out_dir)
    embeddings = result.get("embeddings", {})
    if not isinstance(embeddings, Mapping):
        raise TypeError("result['embeddings'] must map agent id -> (steps, dim) array")
    report = to_jsonable({k: v for k, v in result.items() if k != "embeddings"})
    arrays = {_check_agent_id(agent): np.asarray(emb) for agent, emb in embeddings.items()}
    for agent, emb in arrays.items():
        if emb.ndim != 2:
            raise ValueError(
                f"embeddings of agent {agent!r} must be 2-D (steps, dim), got {emb.shape}"
            )

    directory.mkdir(parents=True, exist_ok=True)
    for agent, emb in arrays.items():
        buffer = io.BytesIO()
        # allow_pickle=False: an .npy file must never carry code, here or when it is read back.
        np.save(buffer, np.ascontiguousarray(emb), allow_pickle=False)
        write_atomic(directory / EMBEDDINGS_DIR / f"{agent}.npy", buffer.getvalue())
    text = json.dumps(report, indent=1, allow_nan=False) + "\n"
    write_atomic(directory / REPORT_FILE, text.encode())
    write_plots(directory, report)
    return directory


def load_run(run_dir: StrPath) -> dict[str, Any]:
    """Read a run directory back: the report dict plus ``"embeddings"`` (agent -> array).

    Raises DataError, naming the file, if the report is missing or not a JSON object, or if an
    embeddings file is missing, unreadable, not 2-D, or has a different number of rows (steps)
    than the others.
    """
    directory = Path(run_dir)
    path = directory / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; is {directory} an osml run directory?") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(report, dict):
        raise DataError(f"{path}: expected a JSON object")

    agents = report.get("agents")
    if agents is None:
        agents = sorted(p.stem for p in (directory / EMBEDDINGS_DIR).glob("*.npy"))
    if not isinstance(agents, list) or not all(isinstance(a, str) for a in agents):
        raise DataError(f"{path}: 'agents' must be a list of agent ids")

    embeddings: dict[str, np.ndarray] = {}
    rows: tuple[str, int] | None = None  # (agent, row count) of the first file, for the message
    for agent in agents:
        try:
            npy = directory / EMBEDDINGS_DIR / f"{_check_agent_id(agent)}.npy"
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        try:
            emb = np.load(npy, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{npy}: missing (the report lists agent {agent!r})") from None
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"{npy}: not a readable .npy array ({exc})") from exc
        if not isinstance(emb, np.ndarray) or emb.ndim != 2:
            raise DataError(f"{npy}: expected a 2-D array (steps, dim), got shape {np.shape(emb)}")
        if not np.issubdtype(emb.dtype, np.number):
            raise DataError(f"{npy}: expected numbers, got dtype {emb.dtype}")
        if rows is None:
            rows = (agent, emb.shape[0])
        elif emb.shape[0] != rows[1]:
            raise DataError(
                f"{npy}: has {emb.shape[0]} rows but agent {rows[0]!r} has {rows[1]}; "
                "every agent must embed the same steps"
            )
        embeddings[agent] = emb
    report["embeddings"] = embeddings
    return report


# ----------------------------------------------------------------------------------- summary


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "-"


def _best(pairs: Mapping[str, Any], members: list[str]) -> float | None:
    values = [pairs[m] for m in members if isinstance(pairs.get(m), (int, float))]
    return max(values) if values else None


def summary_table(report: Mapping[str, Any]) -> str:
    """A plain-text table of the final state per agent.

    Columns: agent, its sub-context (as it sees it), probe R^2 (how well its embedding predicts its
    own window's last value), spread (share of embedding energy that varies; 0 is collapse), and
    its best strict and centered alignment with another member of its sub-context.
    """
    final = report.get("final") or {}
    subcontexts = final.get("subcontexts") or {}
    agents = list(report.get("agents") or subcontexts)
    strict = final.get("strict_alignment") or {}
    centered = final.get("centered_alignment") or {}
    probe = final.get("probe_r2") or {}
    spreads = final.get("spread") or {}

    header = ["agent", "sub-context", "probe R^2", "spread", "best strict", "best centered"]
    rows = []
    for agent in agents:
        members = [m for m in subcontexts.get(agent, [agent]) if m != agent]
        rows.append(
            [
                agent,
                ",".join(subcontexts.get(agent, [agent])),
                _fmt(probe.get(agent)),
                _fmt(spreads.get(agent)),
                _fmt(_best(strict.get(agent) or {}, members)),
                _fmt(_best(centered.get(agent) or {}, members)),
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # text columns left-aligned, numbers right-aligned
        parts = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    round_no = final.get("round")
    if round_no is not None:
        out.append(f"(after round {round_no}; best = highest with another sub-context member)")
    adversaries = report.get("adversaries") or {}
    for name, spec in sorted(adversaries.items()):
        out.append(f"{name}: adversary ({spec}), linked to every agent; not evaluated")
    return "\n".join(out)


def shared_pairs(subcontexts: Mapping[str, list[str]]) -> list[tuple[str, str]]:
    """Unordered pairs of agents found together in at least one agent's sub-context, sorted."""
    pairs = set()
    for members in subcontexts.values():
        for i, a in enumerate(sorted(members)):
            for b in sorted(members)[i + 1 :]:
                pairs.add((a, b))
    return sorted(pairs)


# ------------------------------------------------------------------------------------- plots


def _matplotlib() -> tuple[Any, Any] | None:
    """(Figure, FigureCanvasAgg), or None when matplotlib is not installed.

    The Agg canvas is attached to each figure directly, so the process-wide pyplot backend is
    never touched: this works headless and inside programs that use another backend.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def plots_available() -> bool:
    """Whether :func:`write_plots` can draw (matplotlib is importable)."""
    return _matplotlib() is not None


def _save(fig: Any, canvas_cls: Any, path: Path) -> None:
    canvas_cls(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_atomic(path, buffer.getvalue())


def _pair_matrix(values: Mapping[str, Any], agents: list[str]) -> np.ndarray:
    n = len(agents)
    matrix = np.full((n, n), np.nan)
    for i, a in enumerate(agents):
        for j, b in enumerate(agents):
            value = 1.0 if a == b else (values.get(a) or {}).get(b)
            if isinstance(value, (int, float)):
                matrix[i, j] = value
    return matrix


def _similarity_figure(figure_cls: Any, report: Mapping[str, Any]) -> Any:
    # Strict and centred side by side: the strict cosine is high between any two agents of a
    # context (they share the anchor), the centred one shows which agents share what varies.
    final = report.get("final") or {}
    strict = final.get("strict_alignment") or {}
    agents = list(report.get("agents") or strict)
    n = len(agents)
    size = 2.5 + 0.6 * n
    fig = figure_cls(figsize=(2 * size + 1.0, size), layout="constrained")
    axes = fig.subplots(1, 2)
    image = None
    for ax, key, label in zip(
        axes, ("strict_alignment", "centered_alignment"), ("strict", "centered")
    ):
        matrix = _pair_matrix(final.get(key) or {}, agents)
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        ax.set_xticks(range(n), agents)
        ax.set_yticks(range(n), agents)
        for i in range(n):
            for j in range(n):
                if np.isfinite(matrix[i, j]):
                    colour = "white" if abs(matrix[i, j]) > 0.6 else "black"
                    ax.text(
                        j,
                        i,
                        f"{matrix[i, j]:.2f}",
                        ha="center",
                        va="center",
                        color=colour,
                        fontsize=9,
                    )
        ax.set_title(f"Same-step {label} alignment, round {final.get('round', '?')}")
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    return fig


def _alignment_figure(figure_cls: Any, report: Mapping[str, Any]) -> Any:
    rounds = report.get("rounds") or []
    final = report.get("final") or {}
    pairs = shared_pairs(final.get("subcontexts") or {})
    fig = figure_cls(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = [entry.get("round", i) for i, entry in enumerate(rounds)]

    def series(key: str, a: str, b: str) -> list[float]:
        out = []
        for entry in rounds:
            value = ((entry.get(key) or {}).get(a) or {}).get(b)
            out.append(float(value) if isinstance(value, (int, float)) else float("nan"))
        return out

    for k, (a, b) in enumerate(pairs):
        colour = f"C{k % 10}"
        ax.plot(
            x, series("strict_alignment", a, b), "-o", color=colour, ms=3, label=f"{a}-{b} strict"
        )
        ax.plot(
            x,
            series("centered_alignment", a, b),
            "--s",
            color=colour,
            ms=3,
            label=f"{a}-{b} centered",
        )
    if pairs:
        ax.legend(fontsize=8, loc="lower right", ncol=1 + len(pairs) // 6)
    else:
        ax.text(
            0.5,
            0.5,
            "no two agents share a final sub-context",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("round (state before that round's exchange)")
    ax.set_ylabel("mean same-step cosine")
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.grid(True, alpha=0.3)
    ax.set_title("Alignment of agents sharing a final sub-context")
    return fig


def write_plots(
    run_dir: StrPath, report: Mapping[str, Any], *, overwrite: bool = True
) -> list[Path]:
    """Draw ``similarity.png`` and ``alignment.png`` into ``run_dir``; returns the files written.

    Returns an empty list when matplotlib is missing. With ``overwrite=False`` existing plots are
    kept.
    """
    mpl = _matplotlib()
    if mpl is None:
        return []
    figure_cls, canvas_cls = mpl
    directory = Path(run_dir)
    written = []
    for name, build in ((SIMILARITY_PLOT, _similarity_figure), (ALIGNMENT_PLOT, _alignment_figure)):
        path = directory / name
        if path.exists() and not overwrite:
            continue
        _save(build(figure_cls, report), canvas_cls, path)
        written.append(path)
    return written
