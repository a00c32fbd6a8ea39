"""The Python face of a model: tokenization, teacher-forced logits and streaming generation.

The Rust core owns the forward pass and the KV cache. This module owns the loop around it: it
turns text into token ids, samples each next token, detects stop conditions and streams text.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from . import _core
from .default_model import resolve_model_path
from .errors import ContextFullError, MerError
from .sampling import Sampler, SamplerSettings
from .tokenizer import StreamDecoder, Tokenizer

log = logging.getLogger("mer")

# The largest accepted thread count. The core starts every thread it is given, so a larger count is
# taken for a typing mistake.
MAX_THREADS = 1024

# Each generation's id, which the core checks so that one generation cannot continue in a context
# that another has reset.
_generation_ids = itertools.count(1)


class Model:
    """A GGUF model opened for inference.

    `path` is the GGUF file. Without it, MER uses $MER_MODEL or the default model
    (SmolLM2-135M-Instruct Q4_1), downloading the default on first use. `threads` is the
    number of compute threads, by default the number of physical cores.

    `ram_budget` is the RAM for expert slots, as bytes or a string such as "8G" or "512M"
    (binary units). Experts are then read from the file as the router picks them, and resident
    weights (everything else) stay in RAM on top of the budget. Without a budget, every expert
    gets a slot and is read once. `io_backend` is "auto" (io_uring, falling back to pread and
    then buffered reads), "io_uring", "pread" or "buffered".
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        ram_budget: str | int | None = None,
        io_backend: str = "auto",
        prefetch: bool = True,
        trace: str | os.PathLike[str] | None = None,
    ) -> None:
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS
        ):
            raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS}, got {threads!r}")
        cpus = os.cpu_count() or 1
        if threads is not None and threads > cpus:
            log.warning("%d threads on %d CPUs: the extra threads only wait for a CPU, so decoding will be "
                        "slower than with --threads %d", threads, cpus, cpus)
        self.path = resolve_model_path(path)
        budget = None if ram_budget is None else parse_size(ram_budget)
        self._core = _core.CoreModel(self.path, threads, budget, io_backend, prefetch=bool(prefetch), trace=trace)
        self.metadata: dict[str, Any] = self._core.metadata
        self.config: dict[str, Any] = self._core.config
        self.tokenizer = Tokenizer.from_metadata(self.metadata, source=str(self.path))
        if self.tokenizer.n_vocab < self.config["n_vocab"]:
            log.warning(
                "%s: the tokenizer has %d tokens but the embedding has %d rows; generation samples only "
                "among the first %d", self.path, self.tokenizer.n_vocab, self.config["n_vocab"], self.tokenizer.n_vocab,
            )
        elif self.tokenizer.n_vocab > self.config["n_vocab"]:
            log.warning(
                "%s: the tokenizer has %d tokens but the embedding has %d rows",
                self.path, self.tokenizer.n_vocab, self.config["n_vocab"],
            )
        stats = self._core.stats()
        log.info(
            "opened %s: %s, %d layers, %s, resident weights %.1f MiB, expert weights %.1f MiB; "
            "%d slots of %.1f MiB; I/O backend %s (%s); %s kernels, %d threads",
            self.path.name, self.config["architecture"], self.config["n_layer"], _describe_experts(self.config),
            stats["resident_bytes"] / MIB, stats["expert_bytes"] / MIB, stats["slots"], stats["slot_bytes"] / MIB,
            stats["io_backend"], stats["io_backend_reason"], stats["kernels"], stats["threads"],
        )

    @property
    def n_vocab(self) -> int:
        """Number of rows of the logits."""
        return int(self.config["n_vocab"])

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Convert text to token ids. `add_special` adds BOS/EOS where the model's metadata requests them, and
        `parse_special` turns special-token text such as "<|im_start|>" into its single id."""
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Iterable[int]) -> str:
        """Convert token ids back to text."""
        return self.tokenizer.decode(ids)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Return float32 logits of shape (len(ids), n_vocab), teacher-forced from an empty
        context: row i is the prediction after ids[0..i]."""
        ids = list(ids)
        if not ids:
            return np.zeros((0, self.n_vocab), dtype=np.float32)
        return _check_finite(self._core.eval(ids, all_logits=True, phase="prompt", reset=True))

    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 128,
        *,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> Generation:
        """Generate text after `prompt` (a string, or token ids) and yield it piece by piece.

        Generation ends at an end-of-generation token, at any of the `stop` strings (which are
        not returned), after `max_tokens` tokens or when the context is full. The returned
        `Generation` is an iterator of text pieces; after it is exhausted, its `prompt_ids`,
        `generated_ids`, `text` and `stop_reason` describe the run.
        """
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise ValueError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
        if isinstance(stop, str):
            stop = [stop]
        settings = SamplerSettings(
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
            repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed,
        )
        prompt_ids = self.tokenize(prompt) if isinstance(prompt, str) else [_token_id(t) for t in prompt]
        if not prompt_ids:
            raise ValueError("the prompt is empty: it has no tokens to start from")
        log.debug("prompt: %d tokens %s; sampling: %s; stop strings: %r", len(prompt_ids), prompt_ids, settings, list(stop))
        return Generation(self, prompt_ids, max_tokens, Sampler(settings), [s for s in stop if s])

    def stats(self) -> dict[str, Any]:
        """Return the run statistics: memory, threads, and tokens and time per phase."""
        return dict(self._core.stats())

    def reset_stats(self) -> None:
        """Zero the token and time counters."""
        self._core.reset_stats()


class Generation:
    """An iterator over the text pieces of one generation, created by `Model.generate`."""

    def __init__(
        self, model: Model, prompt_ids: list[int], max_tokens: int, sampler: Sampler, stop: list[str]
    ) -> None:
        self.prompt_ids = prompt_ids
        self.generated_ids: list[int] = []
        self.text = ""
        self.stop_reason: str | None = None
        # The CLI turns this off so that it can end the streamed text before the summary.
        self.log_summary_at_end = True
        self._model = model
        self._max_tokens = max_tokens
        self._sampler = sampler
        self._stop = stop
        self._id = next(_generation_ids)
        self._pieces = self._run()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def _run(self) -> Iterator[str]:
        model = self._model
        core = model._core
        decoder = StreamDecoder(model.tokenizer)
        eog = model.tokenizer.eog_ids
        full_text = ""
        emitted = 0
        # Token ids seen so far, for the repetition penalty; appended to, not rebuilt per token.
        history = list(self.prompt_ids)

        core.reset_stats()
        try:
            logits = _check_finite(core.eval(self.prompt_ids, all_logits=False, phase="prompt", reset=True, owner=self._id))[0]
        except ContextFullError as e:
            raise ContextFullError(
                f"the prompt has {len(self.prompt_ids)} tokens, more than the context of "
                f"{model.config['n_ctx']} tokens"
            ) from e

        while True:
            if len(self.generated_ids) >= self._max_tokens:
                self.stop_reason = "length"
                break
            # Embedding rows past the tokenizer's tokens have no text, so they are never sampled.
            token = self._sampler.sample(logits[: model.tokenizer.n_vocab], history)
            if token in eog:
                self.stop_reason = "eog"
                break
            self.generated_ids.append(token)
            history.append(token)
            full_text += decoder.feed(token)

            end, found = _stop_scan(full_text, self._stop, emitted)
            if end > emitted:
                yield full_text[emitted:end]
                emitted = end
            if found:
                self.stop_reason = "stop"
                break
            if len(self.generated_ids) >= self._max_tokens:
                # The last token needs no forward pass: nothing will be sampled after it.
                self.stop_reason = "length"
                break

            try:
                n_past = len(self.prompt_ids) + len(self.generated_ids) - 1
                logits = _check_finite(core.eval([token], phase="decode", expect_n_past=n_past, owner=self._id))[0]
            except ContextFullError:
                log.warning("the context of %d tokens is full; generation stops here", model.config["n_ctx"])
                self.stop_reason = "context"
                break

        if self.stop_reason != "stop":
            full_text += decoder.flush()
            if len(full_text) > emitted:
                yield full_text[emitted:]
                emitted = len(full_text)
        self.text = full_text[:emitted]
        if self.log_summary_at_end:
            self.log_summary()

    def log_summary(self) -> None:
        """Log the run summary at INFO: tokens/s per phase, expert hits, I/O and memory."""
        _log_summary(self._model.stats(), self.stop_reason)


def _token_id(value: Any) -> int:
    """Return `value` as a token id, raising ValueError for anything but an integer."""
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"a prompt token id must be an integer, got {value!r}") from None


def _check_finite(logits: np.ndarray) -> np.ndarray:
    """Return `logits`, or raise MerError if any is NaN or infinite (corrupt weights)."""
    if not np.isfinite(logits).all():
        rows = sorted({int(r) for r in np.argwhere(~np.isfinite(logits))[:, 0]})
        raise MerError(
            f"the forward pass produced non-finite logits (rows {rows[:8]}): the model's weights "
            "are probably corrupt (NaN or infinite scales)"
        )
    return logits


def _stop_scan(text: str, stops: list[str], emitted: int) -> tuple[int, bool]:
    """Return how far `text` may be emitted, and whether a stop string was found.

    Text up to the earliest stop string is safe. Without a match, a tail that could still grow
    into a stop string is held back."""
    if not stops:
        return len(text), False
    longest = max(len(s) for s in stops)
    search_from = max(0, emitted - longest + 1)
    hits = [i for i in (text.find(s, search_from) for s in stops) if i >= 0]
    if hits:
        return max(min(hits), emitted), True
    held_back = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), held_back, -1):
            if text.endswith(s[:n]):
                held_back = n
                break
    return max(len(text) - held_back, emitted), False


def _describe_experts(config: dict[str, Any]) -> str:
    if config["n_expert"]:
        return f"{config['n_expert']} experts per layer, {config['n_expert_used']} used"
    return "dense (each FFN is one always-used expert)"


def _log_summary(stats: dict[str, Any], stop_reason: str | None) -> None:
    latency = stats["read_latency_us"]
    budget = stats["ram_budget_bytes"]
    log.info(
        "run summary (stop: %s)\n"
        "  prompt: %d tokens at %.2f tokens/s, in batches of up to 64\n"
        "  decode: %d forward passes at %.2f tokens/s\n"
        "  decode experts: hit rate %.3f (%d hits, %d misses), %.1f MiB read, I/O share %.3f "
        "(I/O wait %.2f s, compute %.2f s), read latency p50/p95/p99 %d/%d/%d us\n"
        "  prefetch: %s, governor %s, %d issued, %d used (%d ready in time), precision %.2f, "
        "%.1f MiB wasted; predictor recall %.2f\n"
        "  memory: %s backend, %d slots of %.1f MiB, RAM budget %s, resident weights %.1f MiB, "
        "KV cache %.1f MiB, peak RSS %.1f MiB; %d threads",
        stop_reason, stats["prompt_tokens"], stats["prompt_tokens_per_s"], stats["decode_tokens"],
        stats["decode_tokens_per_s"], stats["hit_rate"], stats["hits"], stats["misses"], stats["bytes_read"] / MIB,
        stats["io_share"], stats["io_wait_s"], stats["compute_s"], latency["p50"], latency["p95"], latency["p99"],
        "on" if stats["prefetch"] else "off", stats["governor_state"], stats["prefetch_issued"], stats["prefetch_used"],
        stats["prefetch_hits"], stats["prefetch_precision"], stats["prefetch_wasted_bytes"] / MIB,
        stats["predictor_recall"], stats["io_backend"], stats["slots"], stats["slot_bytes"] / MIB,
        "none (every expert has a slot)" if budget is None else _format_bytes(budget),
        stats["resident_bytes"] / MIB, stats["kv_cache_bytes"] / MIB, stats["peak_rss_bytes"] / MIB, stats["threads"],
    )


MIB = 1 << 20


def _format_bytes(n: int) -> str:
    """Format a byte count in GiB from 1 GiB up, else in MiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 1 << 30 else f"{n / MIB:.1f} MiB"
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: str | int) -> int:
    """Return a byte count from an int or a string such as "8G", "512M", "1.5GiB" or "4096".

    Units are binary: K = 1024 bytes, M = 1024 K, G = 1024 M, T = 1024 G. A trailing "B" or "iB" is
    allowed."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        if not 0 < value < 2**63:
            raise ValueError(f"invalid size {value}: expected a positive number of bytes below 8 EiB")
        return value
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
    number = text[: len(text) - len(unit)].strip()
    try:
        size = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise ValueError(f"invalid size {value!r}: expected a number with an optional unit K, M, G or T, such as 8G") from None
    if not 1 <= size < 2**63:
        raise ValueError(f"invalid size {value!r}: expected a positive size below 8 EiB")
    return int(size)
