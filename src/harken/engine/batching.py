"""Cross-request batching for CTranslate2 Whisper models.

faster-whisper decodes one 30-second window at a time: encode the window (and, when the
language is unknown, detect it: one decoder step), then generate its tokens. Many requests
running at once each make those calls from their own thread. `BatchingWhisper` stands in for
the CTranslate2 model those threads call: it gathers the calls that are waiting at the same
moment into one batched call, then hands every caller its own row of the result.

What gains most is the beam search: one decoding step over the hypotheses of eight windows
costs little more than over one window's, and generation per window fell from 0.78 s alone to
0.41 s in batches of eight (whisper-base, 2 cores). The encoder gains little on a CPU (its
matrices are already large; per window a batch of eight was 3-15% slower than one at a time;
on another day batches of 2-4 took 0.7x, yet pieces of a long recording encoded in batches
of up to 4 were read no faster: docs/long-recordings.md), so encoder passes run one window at
a time by default (`max_encode_batch`), and the executors
(`executors`, one per CTranslate2 replica) keep the cores busy with one window's encoder pass
next to another batch's beam search.

Each request keeps faster-whisper's own sequential logic (seek, previous-text prompt,
temperature fallback, word timestamps), so its transcript is the one the raw engine gives:
only the matrix work is shared. A long file submits one window per round, so windows of short
requests that arrive meanwhile join the next batch instead of waiting for the whole file.

What is batched together must agree on everything CTranslate2 applies to the whole batch: the
decoding options, the window's length (a live draft's is shorter than 30 s), and (a CTranslate2
limit) the position of <|startoftranscript|> in the prompt.
Calls that differ run in separate batches, oldest first.

Pieces of one long recording read side by side (`SiblingGroup`) are held to one pace instead:
a sibling's beam search waits until every sibling still reading has one waiting, and those
whose <|startoftranscript|> sits at the same position run as one batch (the first windows of
pieces, without previous text, always do). So that the others do too, a group may cut every
window's previous text to its last `SiblingGroup.previous_tokens` tokens, whoever it meets:
cutting each batch's previous texts to the shortest among them, as before, made the text depend
on which siblings met, and so on the machine's load (the tests' 10-minute recording, tiny.en:
WER 3.9% idle, 4.3% beside a busy core). Cut to its last 32 tokens, the text lost words on
speakers taking turns (whisper-base: WER 4.3-4.6% against 3.1-3.3% with 64 tokens or more, the
raw engine 4.1%); cut to 128, few prompts were that long and 0-7% of the time was saved; 64
(`longform`) saved 4-20%. A shorter previous text is cut to the longest of a few set
lengths it reaches (`SHORTER_PREVIOUS_TOKENS`), so that the first windows of pieces prompted
with their lead-ins meet as well. Left alone,
siblings' windows almost never meet and two beam searches run at once on the same cores; at the
same pace, eight of them cost little more than two. A sibling that is not back is waited for
while the model is busy (its encoder pass or word alignment may be queued behind the others':
a round of eight encoder passes takes seconds), but not once the model has had nothing to do
for `SIBLING_IDLE_SECONDS` (it is busy elsewhere, and the others need not wait for it), nor
past `SIBLING_WAIT_SECONDS`. Every call a sibling makes (word alignment too) goes through the
batcher, so that it can tell the two apart.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# How long the dispatcher waits, after a batch, for the callers it just served to come back
# with their next call (they run a little Python between calls). Long enough to gather them,
# short enough that a lone request never notices.
LINGER_SECONDS = 0.004
# A sibling's beam search waits for the others' while the model is busy, but not once it has
# had nothing to do for this long (a sibling between two model calls runs a few ms of Python),
# and never longer than `SIBLING_WAIT_SECONDS` (a bound: a round is seconds long).
SIBLING_IDLE_SECONDS = 0.2
SIBLING_WAIT_SECONDS = 20.0
# A sibling's previous text shorter than the group's `previous_tokens` is cut to the longest of
# these lengths it reaches, so that short ones meet too: the first window of a piece read with
# the text of its lead-in (`longform`: 10 s of speech, 25-40 tokens) had its prompt's length to
# itself, and its beam search ran alone. Talk 18 dB under (the benchmark's four builds,
# whisper-base, in one process): 115 s -> 102 s (25, 33, 29, 28 -> 23, 28, 23, 28 s), 143 -> 141
# word errors; talk 10 dB under (two) and four crowds built apart, 210 -> 204 and 236 -> 238;
# 28 other recordings (the benchmark's, nine held-out kinds, twelve over steady noise), the same
# word errors but for three noisy ones (101 -> 98, 110 -> 112, 14 -> 15). Through the server
# (one run each), talk 18 dB under took 0.80x the raw engine's time before and after, mean WER
# 7.0% -> 6.9%. The length depends on the window's own text only, never on whom it meets.
SHORTER_PREVIOUS_TOKENS = (8, 12, 16, 24, 32, 48)


class Cancelled(Exception):
    """The job this thread works for was cancelled; raised instead of starting more work."""


_local = threading.local()


@contextlib.contextmanager
def cancel_scope(cancelled: threading.Event) -> Iterator[None]:
    """Model calls made by this thread inside the block stop with `Cancelled` once `cancelled`
    is set, so a cancelled long file gives up its place in the next batch."""
    previous = getattr(_local, "cancelled", None)
    _local.cancelled = cancelled
    try:
        yield
    finally:
        _local.cancelled = previous


def current_cancel_event() -> threading.Event | None:
    """The event that cancels this thread's model calls (see `cancel_scope`), for handing the
    same scope to helper threads that work for the same job."""
    return getattr(_local, "cancelled", None)


class SiblingGroup:
    """Threads that read pieces of one recording side by side, whose beam searches the
    batcher runs together (see the module's docstring). A thread belongs to it inside
    `member()`; one that leaves (its piece read, or cancelled) is no longer waited for."""

    def __init__(self, previous_tokens: int | None = None) -> None:
        self.members: set[int] = set()
        # Each window's previous text is cut to its last this many tokens (None: left as
        # Whisper gives it), so that the siblings' prompts have one length and meet in a batch.
        self.previous_tokens = previous_tokens

    @contextlib.contextmanager
    def member(self) -> Iterator[None]:
        me = threading.get_ident()
        previous = getattr(_local, "siblings", None)
        self.members.add(me)
        _local.siblings = self
        try:
            yield
        finally:
            _local.siblings = previous
            self.members.discard(me)


def _check_cancelled() -> None:
    event: threading.Event | None = getattr(_local, "cancelled", None)
    if event is not None and event.is_set():
        raise Cancelled()


@dataclass
class _Call:
    key: tuple[Any, ...]
    payload: Any
    caller: int
    siblings: SiblingGroup | None = None
    submitted: float = field(default_factory=time.monotonic)
    released: bool = False  # a sibling's call whose round is complete
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What the batcher did, read by the metrics endpoint."""

    batches: Counter[tuple[str, int]] = field(default_factory=Counter)  # (kind, size) → count
    windows: int = 0
    busy: int = 0
    busy_seconds: float = 0.0


class BatchingWhisper:
    """A drop-in for `ctranslate2.models.Whisper` whose `encode` and `generate` are batched
    across threads. Every other attribute is the wrapped model's."""

    def __init__(
        self,
        model: Any,
        *,
        sot_token: int,
        max_batch: int,
        max_encode_batch: int = 1,
        executors: int = 1,
        previous_token: int | None = None,
    ) -> None:
        self._model = model
        self.sot_token = sot_token
        self.previous_token = previous_token  # <|startofprev|>, which opens a previous text
        self.max_batch = max(1, max_batch)
        self.max_encode_batch = max(1, min(max_encode_batch, self.max_batch))
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._expected = 0  # callers served by the last batch, likely to call again soon
        self._closed = False
        self._quiet_since = time.monotonic()  # when the last batch ended with none running
        self._threads = [
            threading.Thread(target=self._dispatch, name=f"harken-batcher-{i}", daemon=True)
            for i in range(max(1, executors))
        ]
        for thread in self._threads:
            thread.start()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    # --- the calls faster-whisper makes per window
    def encode(self, features: Any, to_cpu: bool = False) -> Any:
        array = np.asarray(features, dtype=np.float32)
        if array.ndim == 2:
            array = array[None]
        if array.shape[0] != 1:
            return self._model.encode(features, to_cpu=to_cpu)
        return self._submit(("encode", array.shape[-1]), array[0])  # a draft's may be short

    def detect_language(self, features: Any) -> Any:
        """One decoder step over an encoded window: its language probabilities."""
        array = np.asarray(features, dtype=np.float32)
        if array.ndim != 3 or array.shape[0] != 1:
            return self._model.detect_language(features)
        return [self._submit(("detect", array.shape[1]), array[0])]

    def generate(self, features: Any, prompts: list[list[int]], **options: Any) -> Any:
        if len(prompts) != 1 or options.get("asynchronous"):
            return self._model.generate(features, prompts, **options)
        prompt = list(prompts[0])
        siblings = getattr(_local, "siblings", None)
        keep = siblings.previous_tokens if siblings is not None else None
        if keep is not None:
            prompt = self._cut(prompt, keep)
        sot = prompt.index(self.sot_token) if self.sot_token in prompt else len(prompt)
        position = ("siblings", id(siblings), sot) if siblings is not None else sot
        array = np.asarray(features, dtype=np.float32)
        key = ("generate", position, _freeze(options), array.shape[1])
        return [self._submit(key, (array[0], prompt), siblings)]

    def _cut(self, prompt: list[int], keep: int) -> list[int]:
        """`prompt` with its previous text (between <|startofprev|> and <|sot|>) cut to its
        last `keep` tokens; a shorter one to the longest of `SHORTER_PREVIOUS_TOKENS` it
        reaches."""
        if not prompt or prompt[0] != self.previous_token or self.sot_token not in prompt:
            return prompt
        sot = prompt.index(self.sot_token)
        have = sot - 1
        if have < keep:
            keep = max((n for n in SHORTER_PREVIOUS_TOKENS if n <= have), default=have)
        return [prompt[0], *prompt[sot - keep :]]

    def align(
        self, features: Any, start: list[int], tokens: list[list[int]], frames: int, **options: Any
    ) -> Any:
        """Word alignment (word timestamps): never batched, but queued like every other call,
        so that the batcher knows when the model is busy (see `SiblingGroup`)."""
        return self._submit(("align",), (features, start, tokens, frames, options))

    # --- the callers' side
    def _submit(
        self, key: tuple[Any, ...], payload: Any, siblings: SiblingGroup | None = None
    ) -> Any:
        _check_cancelled()
        call = _Call(key, payload, threading.get_ident(), siblings)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model has been unloaded")
            self._pending.append(call)
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    # --- the dispatcher's side
    def _dispatch(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
                self.stats.busy += 1
            started = time.monotonic()
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self.stats.busy -= 1
                    self.stats.busy_seconds += time.monotonic() - started
                    if not self.stats.busy:
                        self._quiet_since = time.monotonic()
                    self._expected = max(self._expected, len({c.caller for c in batch}))
                for call in batch:
                    call.done.set()

    def _next_batch(self) -> list[_Call] | None:
        """Called with the lock held: wait for work, linger briefly for returning callers,
        then take the oldest call and every pending call that can share its batch."""
        while True:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + LINGER_SECONDS
            while len(self._pending) < min(self._expected, self.max_batch):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._expected = 0
            first = self._first_ready()
            if first is not None:
                break
            if self._pending:  # only siblings waiting for each other
                self._cond.wait(self._sibling_wait())
        limit = {"encode": self.max_encode_batch, "align": 1}.get(first.key[0], self.max_batch)
        batch = [c for c in self._pending if c.key == first.key][:limit]
        taken = {id(c) for c in batch}
        self._pending = [c for c in self._pending if id(c) not in taken]
        return batch

    def _first_ready(self) -> _Call | None:
        """The oldest pending call that may run now: any but a sibling's beam search, which
        waits until its round is complete (every sibling still reading has one pending), or
        the model has had nothing else to do for `SIBLING_IDLE_SECONDS`, or it has waited
        `SIBLING_WAIT_SECONDS`."""
        now = time.monotonic()
        quiet = now - self._quiet_since if not self.stats.busy else 0.0
        for call in self._pending:
            group = call.siblings
            if call.key[0] != "generate" or group is None or call.released:
                return call
            round_ = [c for c in self._pending if c.siblings is group and c.key[0] == "generate"]
            callers = {c.caller for c in round_}
            if (
                group.members <= callers
                or quiet >= SIBLING_IDLE_SECONDS
                or now - call.submitted >= SIBLING_WAIT_SECONDS
            ):
                for c in round_:
                    c.released = True
                return call
        return None

    def _sibling_wait(self) -> float:
        """How long the dispatcher may sleep while siblings wait: until the oldest one's wait
        is over, looking again often (a sibling that leaves, or the model's staying idle, does
        not notify the batcher)."""
        oldest = min(c.submitted for c in self._pending)
        return min(0.01, max(0.0, oldest + SIBLING_WAIT_SECONDS - time.monotonic()))

    def _run(self, batch: list[_Call]) -> None:
        kind = batch[0].key[0]
        try:
            if kind == "encode":
                results = self._encode_batch([c.payload for c in batch])
            elif kind == "detect":
                results = self._model.detect_language(_stacked([c.payload for c in batch]))
            elif kind == "align":
                features, start, tokens, frames, options = batch[0].payload
                results = [self._model.align(features, start, tokens, frames, **options)]
            else:
                results = self._generate_batch(batch[0].key[2], [c.payload for c in batch])
        except BaseException as exc:
            for call in batch:
                call.error = exc
            return
        for call, result in zip(batch, results, strict=True):
            call.result = result
        self.stats.batches[(kind, len(batch))] += 1
        if kind == "encode":
            self.stats.windows += len(batch)

    def _encode_batch(self, windows: list[np.ndarray]) -> list[Any]:
        import ctranslate2

        output = np.asarray(self._model.encode(_stacked(windows), to_cpu=True))
        rows = [np.ascontiguousarray(row[None]) for row in output]
        return [ctranslate2.StorageView.from_array(row) for row in rows]

    def _generate_batch(
        self, frozen: tuple[tuple[str, Any], ...], items: list[tuple[np.ndarray, list[int]]]
    ) -> list[Any]:
        features = _stacked([encoded for encoded, _ in items])
        prompts = [prompt for _, prompt in items]
        options = {name: list(value) if isinstance(value, tuple) else value
                   for name, value in frozen}  # fmt: skip
        return self._model.generate(features, prompts, **options)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _stacked(rows: list[np.ndarray]) -> Any:
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(rows)))


def _freeze(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))


def install(
    whisper_model: Any, *, max_batch: int, max_encode_batch: int = 1, executors: int = 1
) -> BatchingWhisper:
    """Put a batching stand-in between a faster-whisper `WhisperModel` and its CTranslate2 model."""
    batching = BatchingWhisper(
        whisper_model.model,
        sot_token=whisper_model.hf_tokenizer.token_to_id("<|startoftranscript|>"),
        max_batch=max_batch,
        max_encode_batch=max_encode_batch,
        executors=executors,
        previous_token=whisper_model.hf_tokenizer.token_to_id("<|startofprev|>"),
    )
    whisper_model.model = batching
    return batching
