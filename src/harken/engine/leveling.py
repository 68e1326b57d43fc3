"""Bring quiet stretches of speech up to the level of the loudest one beside them.

Whisper reads a quiet voice next to a loud one as background: 12 clips, every second one 25 dB
quieter and 1 s apart, gave 22% WER read together against 3% read one by one (the raw engine
too). Before the model reads a window, each stretch of speech that VAD found in it and that is
more than `_SPREAD_DB` quieter than the loudest stretch there is lifted towards it: the gain is
bounded, stops short of clipping and of `_CEILING_DB`, and changes smoothly through the pauses
between stretches. Read speech varies by 10 dB or so from one sentence or speaker to the next;
lifting from 6 dB of difference changed a clip's words on the 10-minute test recording (one
word worse), from 12 dB it did not, while the 25 dB speaker was still lifted. Windows with no
such difference (every single-speaker clip) are read exactly as before.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from harken.engine.segmentation import SAMPLE_RATE

_SPREAD_DB = 12.0  # stretches quieter than the loudest by more than this are lifted...
_CEILING_DB = -20.0  # but never above this level (dB re full scale)
_MAX_GAIN_DB = 30.0
_PEAK = 0.95  # a lifted stretch's loudest sample stays below this
_FRAME = SAMPLE_RATE // 50  # 20 ms
_RAMP = SAMPLE_RATE // 20  # 50 ms: the shortest change of gain, where two stretches touch
_HOLD = 3  # frames (60 ms) either side of a loud frame that `turn_down_below` leaves as they are
_AROUND = 15 * SAMPLE_RATE  # `turn_down_behind` judges a moment against the speech this near it


def speech_level_db(samples: np.ndarray) -> float:
    """The level of speech in `samples` (dB re full scale): the mean power of its louder half
    of 20 ms frames, so the pauses and padding inside a stretch do not lower it."""
    count = samples.shape[0] // _FRAME
    if count == 0:
        power = float(np.mean(np.square(samples, dtype=np.float64))) if samples.size else 0.0
    else:
        energies = np.sort(_frame_powers(samples))
        power = float(np.mean(energies[count // 2 :]))
    return 10.0 * np.log10(power + 1e-12)


def seconds_at_level(
    samples: np.ndarray, level_db: float, within_db: float, floor_db: float = -np.inf
) -> float:
    """How many seconds of `samples` are no more than `within_db` under `level_db`, and at
    `floor_db` or above (counted in 20 ms frames)."""
    decibels = 10.0 * np.log10(_frame_powers(samples) + 1e-12)
    loud = decibels >= max(level_db - within_db, floor_db)
    return float(np.count_nonzero(loud)) * _FRAME / SAMPLE_RATE


def floor_db(samples: np.ndarray) -> float:
    """The level (dB re full scale) under which the quietest tenth of `samples`' 20 ms frames
    lie: the noise a recording's pauses are filled with, or the silence."""
    powers = _frame_powers(samples)
    if powers.size == 0:
        return -np.inf
    return float(np.percentile(10.0 * np.log10(powers + 1e-12), 10))


def share_under(samples: np.ndarray, level_db: float, under_db: float) -> float:
    """The share of `samples`' 20 ms frames more than `under_db` under `level_db`."""
    decibels = 10.0 * np.log10(_frame_powers(samples) + 1e-12)
    return float(np.mean(decibels < level_db - under_db)) if decibels.size else 0.0


def span_at_level(
    samples: np.ndarray,
    level_db: float,
    within_db: float,
    at_least: float,
    floor_db: float = -np.inf,
) -> tuple[int, int] | None:
    """From the first to the last 20 ms frame of `samples` no more than `within_db` under
    `level_db`, and at `floor_db` or above (sample offsets), if at least `at_least` seconds of
    frames are; else None."""
    decibels = 10.0 * np.log10(_frame_powers(samples) + 1e-12)
    loud = np.flatnonzero(decibels >= max(level_db - within_db, floor_db))
    if loud.shape[0] * _FRAME < at_least * SAMPLE_RATE:
        return None
    return int(loud[0]) * _FRAME, int(loud[-1] + 1) * _FRAME


def turn_down_below(
    samples: np.ndarray, level_db: float | np.ndarray, below_db: float, by_db: float
) -> np.ndarray:
    """`samples` (float32) with what is more than `below_db` under `level_db` (one level, or
    one for each 20 ms frame, the last one partial) turned down by `by_db`: the voices behind
    a speaker, in the speaker's pauses. A frame counts as loud while a loud one is within
    `_HOLD` of it, so the soft starts and ends of words keep their level; the gain changes
    linearly from one frame's middle to the next."""
    powers = _frame_powers(np.pad(samples, (0, -samples.shape[0] % _FRAME)))
    if powers.size == 0:
        return samples
    loud = 10.0 * np.log10(powers + 1e-12) >= np.asarray(level_db) - below_db
    held = np.convolve(loud, np.ones(2 * _HOLD + 1), mode="same") > 0
    if held.all():
        return samples
    middles = np.arange(held.shape[0]) * _FRAME + _FRAME / 2
    gain_db = np.interp(np.arange(samples.shape[0]), middles, np.where(held, 0.0, -by_db))
    return samples * np.power(10.0, gain_db / 20.0).astype(np.float32)


def turn_down_behind(
    samples: np.ndarray, speech: Sequence[tuple[int, int]], below_db: float, by_db: float
) -> np.ndarray:
    """`samples` (float32) with what is more than `below_db` under the speech around it turned
    down by `by_db` (see `turn_down_below`): at each moment, the level of the loudest stretch
    of `speech` (sample spans) within `_AROUND` of it (half a window either side, what Whisper
    hears beside it). Not the stretch a moment lies in: where voices behind fill a speaker's
    pauses, VAD makes stretches of them alone, and each would be judged against itself. Not
    the whole piece's loudest either: a quieter speaker minutes later keeps their words."""
    count = -(-samples.shape[0] // _FRAME)
    if not speech or count == 0:
        return samples
    around = _AROUND // _FRAME
    levels = np.full(count, -np.inf)
    for start, end in speech:
        frames = slice(max(0, start // _FRAME - around), -(-end // _FRAME) + around)
        levels[frames] = np.maximum(levels[frames], speech_level_db(samples[start:end]))
    return turn_down_below(samples, levels, below_db, by_db)


def _frame_powers(samples: np.ndarray) -> np.ndarray:
    """The mean power of each whole 20 ms frame."""
    count = samples.shape[0] // _FRAME
    frames = samples[: count * _FRAME].astype(np.float64).reshape(count, _FRAME)
    return np.mean(frames**2, axis=1)


def level_speech(samples: np.ndarray, speech: Sequence[tuple[int, int]]) -> np.ndarray:
    """`samples` (float32) with each stretch of `speech` (sample spans, in order) brought to the
    level of the loudest one. Returns `samples` itself when nothing needs lifting."""
    if len(speech) < 2:
        return samples
    levels = [speech_level_db(samples[start:end]) for start, end in speech]
    loudest = max(levels)
    gains = []
    for (start, end), level in zip(speech, levels, strict=True):
        lift = loudest - level
        if lift <= _SPREAD_DB:
            gains.append(0.0)
            continue
        peak = float(np.max(np.abs(samples[start:end]))) if end > start else 0.0
        headroom = 20.0 * np.log10(_PEAK / peak) if peak > 0 else _MAX_GAIN_DB
        wanted = min(lift, _CEILING_DB - level)
        gains.append(max(0.0, min(wanted, _MAX_GAIN_DB, headroom)))
    if max(gains) == 0.0:
        return samples
    return samples * _envelope(samples.shape[0], speech, gains)


def _envelope(
    length: int, speech: Sequence[tuple[int, int]], gains_db: Sequence[float]
) -> np.ndarray:
    """A gain per sample: each stretch's own gain inside it, a straight line through the pause
    between two stretches (at least `_RAMP` long, taken from both where they touch), held
    before the first and after the last."""
    points: list[float] = []
    values: list[float] = []
    spans = [list(span) for span in speech]
    for before, after in itertools.pairwise(spans):
        if after[0] - before[1] < _RAMP:
            middle = (before[1] + after[0]) // 2
            before[1] = max(before[0], middle - _RAMP // 2)
            after[0] = min(after[1], middle + _RAMP // 2)
    for (start, end), gain in zip(spans, gains_db, strict=True):
        points += [start, end]
        values += [gain, gain]
    positions = np.arange(length, dtype=np.float32)
    decibels = np.interp(positions, np.asarray(points, dtype=np.float32), values)
    return np.power(10.0, decibels / 20.0).astype(np.float32)
