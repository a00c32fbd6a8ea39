"""Token sampling from logits: greedy, temperature, top-k, top-p, min-p and repetition penalty.

The steps run in llama.cpp's order: repetition penalty, top-k, top-p, min-p, temperature, then a
draw from the remaining candidates. A temperature of 0 (or below) picks the highest logit after
the repetition penalty, with ties going to the lowest token id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FLOAT_MAX = float(np.finfo(np.float64).max)


@dataclass(frozen=True)
class SamplerSettings:
    """Sampling parameters, with llama.cpp's defaults."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def validate(self) -> None:
        """Raise ValueError for a setting outside its valid range."""
        # Each comparison is written so that NaN fails it.
        if not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {self.min_p}")
        if not 0 < self.repeat_penalty < math.inf:
            raise ValueError(f"repeat_penalty must be a finite number > 0 (1 disables it), got {self.repeat_penalty}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be an integer >= 0 or None, got {self.seed!r}")
        if isinstance(self.repeat_last_n, bool) or not isinstance(self.repeat_last_n, int) or self.repeat_last_n < 0:
            raise ValueError(f"repeat_last_n must be an integer >= 0, got {self.repeat_last_n!r}")


class Sampler:
    """Draws token ids from logits. One sampler keeps one random stream, so a fixed seed gives a
    reproducible sequence of draws."""

    def __init__(self, settings: SamplerSettings | None = None) -> None:
        self.settings = settings or SamplerSettings()
        self.settings.validate()
        self._rng = np.random.default_rng(self.settings.seed)

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """Pick the next token id from one row of logits, penalizing ids in `history`."""
        s = self.settings
        scores = np.asarray(logits, dtype=np.float64).reshape(-1).copy()
        apply_repeat_penalty(scores, history, s.repeat_penalty, s.repeat_last_n)
        # A tiny penalty can push a score to infinity, and inf - inf below would be NaN.
        np.clip(scores, -FLOAT_MAX, FLOAT_MAX, out=scores)
        if s.temperature <= 0:
            return int(np.argmax(scores))

        # Candidates in descending order of score; the stable sort keeps ties in id order.
        if 0 < s.top_k < scores.size:
            candidates = np.argpartition(-scores, s.top_k - 1)[: s.top_k]
            candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
        else:
            candidates = np.argsort(-scores, kind="stable")
        kept = scores[candidates]

        if s.top_p < 1.0:
            probs = softmax(kept)
            # Keep the shortest prefix whose probability mass reaches top_p.
            cutoff = int(np.searchsorted(np.cumsum(probs), s.top_p)) + 1
            candidates, kept = candidates[:cutoff], kept[:cutoff]

        if s.min_p > 0.0:
            # p_i >= min_p * p_max is the same as score_i >= max_score + log(min_p).
            keep = kept >= kept[0] + np.log(s.min_p)
            candidates, kept = candidates[keep], kept[keep]

        # Subtracting the top score first keeps a tiny temperature from dividing to inf - inf. The
        # other scores may overflow to -inf, which softmax turns into probability 0.
        with np.errstate(over="ignore"):
            probs = softmax((kept - kept[0]) / s.temperature)
        return int(candidates[self._rng.choice(candidates.size, p=probs)])


def apply_repeat_penalty(scores: np.ndarray, history: Sequence[int], penalty: float, last_n: int) -> None:
    """Penalize, in place, every id among the last `last_n` of `history`: positive scores are
    divided by `penalty` and negative ones multiplied, as in the CTRL paper and llama.cpp."""
    if penalty == 1.0 or last_n == 0 or not history:
        return
    recent = np.unique(np.asarray(history[-last_n:], dtype=np.int64))
    recent = recent[(recent >= 0) & (recent < scores.size)]
    values = scores[recent]
    with np.errstate(over="ignore"):
        scores[recent] = np.where(values > 0, values / penalty, values * penalty)


def softmax(x: np.ndarray) -> np.ndarray:
    """Return softmax(x) along the only axis, computed stably in float64."""
    e = np.exp(x - np.max(x))
    return e / e.sum()
