"""Prefetch on and off on the 8-expert split of the default model, at a quarter of its experts.

This script is opt-in and pytest does not collect it:

    python benches/split_prefetch_ab.py [--rounds 4] [--tokens 128] [--budget 12M] [--work-dir DIR]

It writes the split into --work-dir unless it is there. The split routes top-2, and router row
e is the mean of expert e's gate rows, so routing follows the real hidden states. Each run feeds
the built-in text one token at a time after an 8-token prompt, with O_DIRECT expert reads and
2 threads. Rounds alternate prefetch off and on, so both see the same machine load. Each line gives decode
tokens/s, I/O share, hit rate, prefetch precision and the predictor's recall.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import mer
from mer.bench_text import BENCH_TEXT
from mer.default_model import pull

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from moe_split import write_moe_split  # noqa: E402

PROMPT_TOKENS = 8


def decode(path: Path, budget: str, prefetch: bool, tokens: int) -> dict:
    """Feed the prompt, then `tokens` tokens one at a time, and return the decode statistics."""
    model = mer.Model(path, threads=2, ram_budget=budget, prefetch=prefetch)
    ids = model.tokenize(BENCH_TEXT)[: PROMPT_TOKENS + tokens]
    model.logits(ids[:PROMPT_TOKENS])
    model.reset_stats()
    for n_past, token in enumerate(ids[PROMPT_TOKENS:], start=PROMPT_TOKENS):
        model._core.eval([token], phase="decode", expect_n_past=n_past)
    return model.stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="pairs of runs, off then on (default: 4)")
    parser.add_argument("--tokens", type=int, default=128, help="decode tokens per run (default: 128)")
    parser.add_argument("--budget", default="12M", help="RAM budget for expert slots (default: 12M)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the split is kept (default: a temporary dir)")
    args = parser.parse_args()

    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="mer-split-"))
    path = work_dir / "split8_mean_gate.gguf"
    if not path.exists():
        write_moe_split(pull(), path, n_used=2, router="mean-gate")

    for round_number in range(1, args.rounds + 1):
        for prefetch in (False, True):
            stats = decode(path, args.budget, prefetch, args.tokens)
            print(
                f"round {round_number} prefetch {'on ' if prefetch else 'off'}: "
                f"{stats['decode_tokens_per_s']:.1f} tokens/s, I/O share {stats['io_share']:.3f}, "
                f"hit rate {stats['hit_rate']:.3f}, precision {stats['prefetch_precision']:.2f}, "
                f"recall {stats['predictor_recall']:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
