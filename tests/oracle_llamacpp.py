"""Regenerate llama.cpp reference values for the oracle tests (opt-in, not run by pytest).

It runs llama.cpp through llama-cpp-python on a GGUF file: tokenization with add_special and
parse_special on, then greedy decoding, recording at each step the chosen id, the top-1 minus
top-2 logit margin and the top-1 logit. The output JSON goes to tests/data/ and is committed.
llama-cpp-python builds llama.cpp from source (about 15 minutes), so keep it out of the test
environment:

    python -m venv /tmp/llama-venv && /tmp/llama-venv/bin/pip install llama-cpp-python numpy
    /tmp/llama-venv/bin/python tests/oracle_llamacpp.py MODEL.gguf -o tests/data/OUT.json

With --speed it also measures llama.cpp's decode tokens/s (real text fed one token at a time)
for comparison with MER on the same machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

# Prompts with varied content: prose, code, chat markup, numbers, non-English text.
PROMPTS = {
    "capital_of_france": "The capital of France is",
    "python_fibonacci": "def fibonacci(n):",
    "chat_two_plus_two": "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "recipe": "To make a simple tomato sauce, first",
    "history": "In 1969, the first humans landed on",
    "json": '{"name": "Alice", "age": 30, "city":',
    "list": "Three colors of the rainbow are red,",
    "french": "Le chat est sur la",
    "math": "The square root of 144 is",
    "story": "Once upon a time, in a small village,",
    "chat_haiku": "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "science": "Water boils at a temperature of",
}


def greedy_case(llm, text: str, n_tokens: int) -> dict:
    """Tokenize `text` and decode greedily, recording ids, margins and top logits."""
    prompt_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
    llm.reset()
    llm.eval(prompt_ids)
    greedy, margins, tops = [], [], []
    eog = {llm.token_eos()}
    for _ in range(n_tokens):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        order = np.argsort(-logits, kind="stable")
        token = int(order[0])
        greedy.append(token)
        margins.append(round(float(logits[order[0]] - logits[order[1]]), 4))
        tops.append(round(float(logits[order[0]]), 4))
        if token in eog:
            break
        llm.eval([token])
    return {"text": text, "prompt_ids": list(prompt_ids), "greedy_ids": greedy, "margins": margins, "top_logits": tops}


def decode_speed(llm, n_tokens: int) -> float:
    """Return tokens/s of feeding real text one token at a time after a short prompt."""
    text = " ".join(PROMPTS[k] for k in ("recipe", "history", "story", "science")) * 4
    ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)[: n_tokens + 8]
    llm.reset()
    llm.eval(ids[:8])
    start = time.perf_counter()
    for token in ids[8:]:
        llm.eval([token])
    return (len(ids) - 8) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="GGUF model file")
    parser.add_argument("-o", "--output", type=Path, help="JSON file to write (default: print)")
    parser.add_argument("-n", "--tokens", type=int, default=8, help="greedy steps per prompt (default: 8)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default: 2)")
    parser.add_argument("--speed", action="store_true", help="also measure decode tokens/s over 64 tokens")
    args = parser.parse_args()

    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(args.model), n_ctx=512, n_threads=args.threads, n_threads_batch=args.threads,
        logits_all=True, verbose=False,
    )
    result = {
        "description": (
            f"Greedy decoding by llama.cpp (llama-cpp-python {llama_cpp.__version__}, {args.threads} threads, "
            f"add_special and parse_special on) on {args.model.name}, written by tests/oracle_llamacpp.py. "
            "margins[i] is the top-1 minus top-2 logit at step i, top_logits[i] the top-1 logit."
        ),
        "model_file": args.model.name,
        "cases": [{"name": name, **greedy_case(llm, text, args.tokens)} for name, text in PROMPTS.items()],
    }
    if args.speed:
        result["decode_tokens_per_s"] = round(decode_speed(llm, 64), 2)
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if args.output:
        args.output.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
