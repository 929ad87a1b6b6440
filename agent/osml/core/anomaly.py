"""Per-step anomaly scores: how far a device's embedding departs from what its sub-context says.

Pure numpy, no I/O. Each round an agent has its own embeddings ``own`` (n, d) for the absolute
steps ``steps`` (n,) and the embeddings its sub-context members sent for the same steps. For every
step it reports a *deviation*, a robust *z-score* of that deviation against the device's own
recent history, and whether the step is *flagged* (``z > threshold``).

Deviation, **consensus** mode (at least one member has a row for the step):

1. every agent's rows (own and each member's) are divided by that agent's median row norm over
   the round, as :mod:`osml.core.screening` does: encoders differ a little in scale, and a step is
   anomalous for *where* it points, not for how long the agent's vectors are. One round for all
   agents, so what the round's content does to norms cancels; a fault in more than half of the
   round's own rows shifts the own scale, and the round's clean rows may be flagged with it;
2. the consensus at step t is the coordinate-wise (weighted) median of the members' scaled rows,
   **self excluded**: with self inside, a faulty device would pull its own reference toward it
   (with two members it would be a third of a mean), and a median of three or more members
   ignores one member that is itself faulty, where a mean would pass half of its fault on;
3. deviation(t) = ``|own(t) - consensus(t)|`` (L2). Every agent of a context embeds around the
   same anchor (:mod:`osml.core.anchor`), so a plain cosine between own and consensus would be
   dominated by the anchor and near 1 everywhere; the L2 *difference* cancels the anchor without
   knowing it, and, unlike a cosine of anchor-centred vectors, stays stable when the centred
   vectors are short. Units: fractions of the agent's median norm.

A second consensus test, **motion** (:func:`motion_deviation`), compares how own and consensus
moved from the previous step: what two encoders disagree on for good cancels in differences, so
it sees a stuck sensor, noise or an offset's onset that the level test misses while the encoders'
own mismatch dominates it. It has its own calibration; a step's z is the larger of the two, and
it is flagged if either test flags it.

Deviation, **novelty** mode (the device is alone, or no member has a row for the step): the
distance from own(t) to the coordinate-wise median of the device's last ``novelty_window``
clean embeddings, both divided by the round's own median norm. The median of a window, not the
nearest recent embedding: windows overlap from step to step, so a nearest neighbour is almost
always the previous step and would hide a slow drift or a stuck sensor's first steps. Novelty
deviations are computed (and calibrated) for every new step, in both modes, so the calibration is
warm when a device is left alone, which a faulty device often is (its neighbours' affinity to it
drops). Novelty sees what leaves the device's recent range (a spike, a jump far off); a fault that
stays inside it (a stuck value, a small offset) needs neighbours to be seen.

Calibration, per mode: the last ``history`` clean deviations of *new* steps (a step later than
any seen before: rounds that re-embed older windows do not count them twice). With their median
``m`` and MAD, ``z = (dev - m) / max(1.4826 * MAD, mad_floor)``. Flagged deviations are not added
(``clip_flagged=False``, the default: a lasting fault stays flagged until :meth:`reset`) or are
added clipped to ``m + threshold * scale`` (``clip_flagged=True``: a lasting change of regime is
absorbed after about ``history / 2`` steps). Flagged rows never enter the novelty reference.

A third test, **still**, is for a stuck sensor: its windows become identical, so its embedding
stops moving exactly (step-to-step distance below ``1e-7`` of the median norm), which neither the
level nor the motion test is sure to see while the group itself moves slowly. A new step that is
still is flagged when none of the last ``history`` new steps was (once ``min_history`` have been
seen), so a sensor that sticks is flagged as it stops, about one window after the fault, and a
device whose readings are legitimately constant at times is flagged at most once per ``history``
steps for it. Its z is that of the other tests; the flag is the still test's own.

Warm-up: until a mode's history holds ``min_history`` deviations its scores are reported but no
step is flagged, and every new step's deviation is added.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "AnomalyDetector",
    "AnomalyScores",
    "AnomalySettings",
    "consensus_deviation",
    "motion_deviation",
    "present_rows",
    "robust_scale",
    "robust_z",
    "row_scale",
    "scale_rows",
    "weighted_median",
]

STATE_FORMAT = 1
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
_EPS = 1e-12
STILL_TOLERANCE = 1e-7  # step-to-step distance, in median norms, below which an embedding is still


@dataclass(frozen=True)
class AnomalySettings:
    threshold: float = 7.0  # flag when z exceeds this
    history: int = 512  # clean deviations kept per mode for the calibration
    min_history: int = 64  # warm-up: no flags until a mode's history holds this many
    mad_floor: float = 1e-3  # lowest z denominator, in units of the agent's median norm
    novelty_window: int = 64  # own recent clean embeddings the novelty reference is taken from
    clip_flagged: bool = False  # add flagged deviations clipped at the threshold (else skip them)

    def __post_init__(self) -> None:
        for key in ("history", "min_history", "novelty_window"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"anomaly settings: {key} must be an integer >= 1, got {value!r}")
        if self.min_history > self.history:
            raise ValueError(
                f"anomaly settings: min_history ({self.min_history}) must be <= history "
                f"({self.history}), or nothing would ever be flagged"
            )
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"anomaly settings: threshold must be > 0, got {self.threshold!r}")
        if not (math.isfinite(self.mad_floor) and self.mad_floor > 0):
            raise ValueError(f"anomaly settings: mad_floor must be > 0, got {self.mad_floor!r}")


@dataclass(frozen=True)
class AnomalyScores:
    """One round's scores, one entry per step (aligned with ``steps``)."""

    steps: np.ndarray  # (n,) int64
    deviation: np.ndarray  # (n,) float64
    z: np.ndarray  # (n,) float64
    flagged: np.ndarray  # (n,) bool
    mode: str  # "consensus" when any step was scored against members, else "novelty"
    consensus: np.ndarray  # (n,) bool: True where the step was scored against members


# --- pure functions -------------------------------------------------------------------------


def present_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (n, d) that are entirely finite: NaN (or inf) rows mean "no row"."""
    return np.asarray(np.isfinite(x).all(axis=1), dtype=bool)


def row_scale(x: np.ndarray) -> float:
    """Median norm of the present rows of ``x`` (n, d); 1.0 when there are none or it is ~0."""
    x = np.asarray(x, dtype=np.float64)
    present = present_rows(x)
    if not present.any():
        return 1.0
    norm = float(np.median(np.linalg.norm(x[present], axis=1)))
    return norm if norm > _EPS else 1.0


def scale_rows(x: np.ndarray, scale: float | None = None) -> np.ndarray:
    """``x`` divided by ``scale``, by default the median norm of its present rows."""
    x = np.asarray(x, dtype=np.float64)
    return x / (row_scale(x) if scale is None else scale)


def weighted_median(
    stack: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinate-wise weighted median over the first axis of ``stack`` (k, n, d).

    Rows with a non-finite value are absent. Returns (centre (n, d), covered (n,)); ``centre`` is
    NaN where no member with a positive weight has a row (``covered`` False). With equal weights
    this is the ordinary median (the mean of the two middle values for an even count).
    """
    stack = np.asarray(stack, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"stack must be (k, n, d), got {stack.shape}")
    k, n, d = stack.shape
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (k,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"need {k} finite weights >= 0, got {weights!r}")
    if k == 0:
        return np.full((n, d), np.nan), np.zeros(n, dtype=bool)
    present = np.isfinite(stack).all(axis=2)  # (k, n)
    wp = np.where(present, w[:, None], 0.0)
    covered = wp.sum(axis=0) > 0
    values = np.where(present[..., None], stack, np.inf)  # absent rows sort last
    order = np.argsort(values, axis=0, kind="stable")
    ranked = np.take_along_axis(values, order, axis=0)
    cum = np.cumsum(np.take_along_axis(np.broadcast_to(wp[..., None], (k, n, d)), order, axis=0), 0)
    half = cum[-1] / 2.0
    tol = 1e-9 * cum[-1]
    # Lower and upper weighted medians; their mean is the ordinary median for equal weights.
    lo = np.argmax(cum >= half - tol, axis=0)[None]
    hi = np.argmax(cum > half + tol, axis=0)[None]
    with np.errstate(invalid="ignore"):  # uncovered steps: inf + inf, replaced below
        centre = 0.5 * (np.take_along_axis(ranked, lo, 0)[0] + np.take_along_axis(ranked, hi, 0)[0])
    centre[~covered] = np.nan
    return centre, covered


def consensus_deviation(
    own: np.ndarray,
    members: Sequence[np.ndarray],
    weights: np.ndarray | None = None,
    own_scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-step L2 distance of ``own`` (n, d) from its members' weighted median (each member
    (n, d), NaN rows where it has none), every agent scaled by its median norm first (``own``
    by ``own_scale`` when given).

    Returns (deviation (n,), covered (n,)); deviation is NaN where ``covered`` is False.
    """
    own_s = scale_rows(own, own_scale)
    n, d = own_s.shape
    if not members:
        return np.full(n, np.nan), np.zeros(n, dtype=bool)
    stack = np.stack([scale_rows(m) for m in members])
    if stack.shape[1:] != (n, d):
        raise ValueError(f"members must be ({n}, {d}), got {stack.shape[1:]}")
    centre, covered = weighted_median(stack, weights)
    dev = np.full(n, np.nan)
    dev[covered] = np.linalg.norm(own_s[covered] - centre[covered], axis=1)
    return dev, covered


def motion_deviation(
    own: np.ndarray,
    members: Sequence[np.ndarray],
    steps: np.ndarray,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Per-step L2 distance between how ``own`` moved since the previous step and how the
    members' consensus moved, each motion divided by that agent's median motion over the round:
    ``|d_own(t) / m_own - d_c(t) / m_c|`` with ``d_x(t) = x(t) - x(t-1)``. What two encoders
    disagree on for good (an offset between their spaces) cancels in the differences, and the
    per-agent motion scale takes out how far each encoder moves for the same change, so this
    sees a device that stops moving with its group (a stuck sensor: its motion goes to 0 against
    a consensus motion of about 1), moves on its own (noise) or jumps (an offset's onset), where
    the level deviation can be dominated by the encoders' mismatch. NaN for a step without a
    consecutive predecessor in the round or without members."""
    own = np.asarray(own, dtype=np.float64)
    n = own.shape[0]
    out = np.full(n, np.nan)
    if not members or n < 2:
        return out
    stack = np.stack([scale_rows(m) for m in members])
    centre, covered = weighted_median(stack, weights)
    ok = (np.diff(np.asarray(steps)) == 1) & covered[1:] & covered[:-1]
    if not ok.any():
        return out
    d_own = own[1:] - own[:-1]
    d_c = centre[1:] - centre[:-1]
    m_own = float(np.median(np.linalg.norm(d_own[ok], axis=1)))
    m_c = float(np.median(np.linalg.norm(d_c[ok], axis=1)))
    if m_c <= _EPS:
        return out  # the group did not move: motion says nothing this round
    moved = (d_own / m_own if m_own > _EPS else 0.0 * d_own) - d_c / m_c
    out[1:][ok] = np.linalg.norm(moved[ok], axis=1)
    return out


def robust_scale(history: np.ndarray, floor: float) -> tuple[float, float]:
    """(median, max(1.4826 * MAD, floor)) of ``history``; (0, floor) when it is empty."""
    h = np.asarray(history, dtype=np.float64)
    if h.size == 0:
        return 0.0, floor
    med = float(np.median(h))
    return med, max(MAD_TO_SIGMA * float(np.median(np.abs(h - med))), floor)


def robust_z(deviation: np.ndarray, history: np.ndarray, floor: float) -> np.ndarray:
    """Robust z-scores of ``deviation`` against ``history`` (see :func:`robust_scale`)."""
    med, scale = robust_scale(history, floor)
    return (np.asarray(deviation, dtype=np.float64) - med) / scale


# --- the stateful detector ------------------------------------------------------------------


class _Calibration:
    """A bounded history of clean deviations with its robust median and scale."""

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque(maxlen=size)

    def z(self, dev: float, floor: float) -> tuple[float, float, float]:
        med, scale = robust_scale(np.fromiter(self.values, np.float64, len(self.values)), floor)
        return (dev - med) / scale, med, scale


class AnomalyDetector:
    """One device's anomaly calibration. Feed it every round with :meth:`score`; persist it with
    :meth:`to_dict` / :meth:`from_dict` (plain JSON-able data, bounded by the settings)."""

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        self.settings = settings or AnomalySettings()
        self.reset()

    def reset(self) -> None:
        """Forget the calibration (e.g. after the encoder changed beyond recognition)."""
        s = self.settings
        self._cal = {mode: _Calibration(s.history) for mode in ("consensus", "novelty", "motion")}
        self._reference: deque[np.ndarray] = deque(maxlen=s.novelty_window)
        self._still: deque[bool] = deque(maxlen=s.history)  # new steps: still or not
        self._previous: tuple[int, np.ndarray] | None = None  # the last row scored, by step
        self.last_step: int | None = None

    def history(self, mode: str) -> int:
        """How many deviations the calibration of ``mode`` holds."""
        return len(self._cal[mode].values)

    def score(
        self,
        steps: np.ndarray,
        own: np.ndarray,
        members: Mapping[str, np.ndarray],
        weights: Mapping[str, float] | None = None,
        masks: Mapping[str, np.ndarray] | None = None,
    ) -> AnomalyScores:
        """Score one round. ``steps`` (n,) are increasing absolute step indices; ``own`` (n, d)
        the device's finite embeddings; ``members`` its sub-context *without itself*, each
        (n, d) with NaN rows (or a False entry in ``masks[member]``) where it has no row for the
        step; ``weights`` optional weights >= 0 per member (each member needs one)."""
        steps = np.asarray(steps)
        own = np.asarray(own, dtype=np.float64)
        if steps.ndim != 1 or (steps.size and not np.issubdtype(steps.dtype, np.integer)):
            raise ValueError(f"steps must be a 1-d integer array, got {steps.dtype} {steps.shape}")
        steps = steps.astype(np.int64)
        if own.ndim != 2 or own.shape[0] != steps.shape[0] or own.shape[1] < 1:
            raise ValueError(f"own must be ({steps.shape[0]}, d), got {own.shape}")
        if not np.isfinite(own).all():
            raise ValueError("own embeddings must be finite")
        if steps.size > 1 and (np.diff(steps) <= 0).any():
            raise ValueError("steps must be strictly increasing")
        names = sorted(members)
        rows = []
        for name in names:
            m = np.array(members[name], dtype=np.float64)
            if m.shape != own.shape:
                raise ValueError(f"member {name!r} sent {m.shape}, own embeddings are {own.shape}")
            if masks is not None and name in masks:
                mask = np.asarray(masks[name], dtype=bool)
                if mask.shape != (own.shape[0],):
                    raise ValueError(f"mask of {name!r} must be ({own.shape[0]},)")
                m[~mask] = np.nan
            rows.append(m)
        w = None
        if weights is not None:
            missing = [name for name in names if name not in weights]
            if missing:
                raise ValueError(f"no weight for members {missing}")
            w = np.array([float(weights[name]) for name in names])
        if self._reference and self._reference[0].shape != own.shape[1:]:
            self._reference.clear()  # the embedding size changed: old rows mean nothing
        # Own and members are scaled by their median norm over this same round, so what the
        # round's content does to norms (it moves rows along the anchor) cancels out. A fault
        # that covers more than half of the round's own rows shifts the own scale, and the
        # round's clean rows may then be flagged with it: conservative, and bounded by a round.
        own_scale = row_scale(own)
        dev_c, covered = consensus_deviation(own, rows, w, own_scale)
        dev_m = motion_deviation(own, rows, steps, w)
        return self._calibrate(steps, own, own_scale, dev_c, covered, dev_m)

    def _calibrate(
        self,
        steps: np.ndarray,
        own: np.ndarray,
        own_scale: float,
        dev_c: np.ndarray,
        covered: np.ndarray,
        dev_m: np.ndarray | None = None,
    ) -> AnomalyScores:
        s = self.settings
        own_s = own / own_scale
        n = steps.shape[0]
        dev = np.zeros(n)
        z = np.zeros(n)
        flagged = np.zeros(n, dtype=bool)
        still = np.zeros(n, dtype=bool)
        if n and own_scale > 0:
            # The previous call's last row precedes this call's first when their steps follow.
            if self._previous is not None and self._previous[1].shape == own.shape[1:]:
                prev_step, prev_row = self._previous
            else:
                prev_step, prev_row = int(steps[0]) - 2, own[0]  # none: the first is not still
            moved = np.linalg.norm(np.diff(np.vstack([prev_row[None, :], own]), axis=0), axis=1)
            follows = np.diff(np.concatenate([[prev_step], steps])) == 1
            still = follows & (moved <= STILL_TOLERANCE * own_scale)
            self._previous = (int(steps[-1]), own[-1].copy())
        for t in range(n):
            step = int(steps[t])
            new = self.last_step is None or step > self.last_step
            novelty: float | None = None
            if self._reference:
                centre = np.median(np.stack(self._reference), axis=0) / own_scale
                novelty = float(np.linalg.norm(own_s[t] - centre))
            mode = "consensus" if covered[t] else "novelty"
            cal = self._cal[mode]
            dev[t] = dev_c[t] if covered[t] else (novelty if novelty is not None else 0.0)
            z[t], med, scale = cal.z(float(dev[t]), s.mad_floor)
            warm = len(cal.values) >= s.min_history
            flagged[t] = warm and z[t] > s.threshold
            motion = float(dev_m[t]) if dev_m is not None and covered[t] else math.nan
            if math.isfinite(motion):  # the step's verdict: the stronger of level and motion
                mcal = self._cal["motion"]
                zm, mmed, mscale = mcal.z(motion, s.mad_floor)
                # Moving *out of* a flagged step (a spike leaving the window) is not new news.
                after_flag = t > 0 and bool(flagged[t - 1])
                flagged_m = (
                    len(mcal.values) >= s.min_history and zm > s.threshold and not after_flag
                )
                z[t] = max(z[t], zm)
                flagged[t] = bool(flagged[t] or flagged_m)
                if new:
                    self._add(mcal, motion, flagged_m, mmed + s.threshold * mscale)
            if new and still[t] and len(self._still) >= s.min_history and not any(self._still):
                flagged[t] = True
            if not new:
                continue
            self.last_step = step
            self._still.append(bool(still[t]))
            if mode == "consensus" or novelty is not None:
                self._add(cal, float(dev[t]), bool(flagged[t]), med + s.threshold * scale)
            if mode == "consensus" and novelty is not None:
                # Keep the novelty calibration warm; the step's verdict is the consensus one.
                ncal = self._cal["novelty"]
                _, nmed, nscale = ncal.z(novelty, s.mad_floor)
                self._add(ncal, novelty, bool(flagged[t]), nmed + s.threshold * nscale)
            if not flagged[t]:
                self._reference.append(own[t].copy())
        return AnomalyScores(
            steps=steps,
            deviation=dev,
            z=z,
            flagged=flagged,
            mode="consensus" if covered.any() else "novelty",
            consensus=covered.copy(),
        )

    def _add(self, cal: _Calibration, dev: float, flagged: bool, clip: float) -> None:
        if not flagged:
            cal.values.append(dev)
        elif self.settings.clip_flagged:
            cal.values.append(min(dev, clip))

    # --- persistence ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able calibration: at most ``3 * history`` floats, ``history`` booleans and
        ``novelty_window`` rows."""
        return {
            "format": STATE_FORMAT,
            "last_step": self.last_step,
            "consensus": [float(v) for v in self._cal["consensus"].values],
            "novelty": [float(v) for v in self._cal["novelty"].values],
            "motion": [float(v) for v in self._cal["motion"].values],
            "still": [bool(v) for v in self._still],
            "reference": [[float(v) for v in row] for row in self._reference],
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], settings: AnomalySettings | None = None
    ) -> AnomalyDetector:
        """Rebuild a detector from :meth:`to_dict`; keeps the newest entries that fit the
        settings. Raises ``ValueError`` on malformed data (start afresh with ``cls()``)."""
        det = cls(settings)
        if not isinstance(data, Mapping) or data.get("format") != STATE_FORMAT:
            raise ValueError(f"anomaly state: expected a mapping with format {STATE_FORMAT}")
        last = data.get("last_step")
        if last is not None and (not isinstance(last, int) or isinstance(last, bool)):
            raise ValueError(f"anomaly state: last_step must be an integer, got {last!r}")
        det.last_step = last
        for mode in ("consensus", "novelty", "motion"):
            values = np.asarray(data.get(mode, []), dtype=np.float64)
            if values.ndim != 1 or not np.isfinite(values).all():
                raise ValueError(f"anomaly state: {mode} must be a list of finite numbers")
            det._cal[mode].values.extend(float(v) for v in values)
        still = data.get("still", [])  # absent in states written before the still test
        if not isinstance(still, list) or not all(isinstance(v, bool) for v in still):
            raise ValueError("anomaly state: still must be a list of booleans")
        det._still.extend(still)
        ref = np.asarray(data.get("reference", []), dtype=np.float64)
        if ref.size and (ref.ndim != 2 or not np.isfinite(ref).all()):
            raise ValueError("anomaly state: reference must be a list of equal-length rows")
        det._reference.extend(
            row.copy() for row in ref.reshape(-1, ref.shape[-1] if ref.size else 1)
        )
        return det
