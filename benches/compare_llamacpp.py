"""Compare MER's decode and prefill speed with llama.cpp's on the same files, text and threads.

This script is opt-in and pytest does not collect it. It needs llama-cpp-python in a separate
Python environment, because that package builds llama.cpp from source (build it once):

    python -m venv /opt/llvenv && /opt/llvenv/bin/pip install llama-cpp-python
    python benches/compare_llamacpp.py [MODEL.gguf ...] [--llama-python /opt/llvenv/bin/python] [--json]

MER runs in this interpreter. llama.cpp runs in a child process of the other interpreter
(llamacpp_worker.py), with use_mmap and n_threads = n_threads_batch = --threads. Both get the same
token ids, from MER's tokenizer, of the text in mer.bench_text:

* decode: 64 tokens fed one at a time after an 8-token prompt, timed without the prompt;
* prefill: the first 64 tokens in one eval call.

Each engine runs one warm-up round, then the rounds of the two engines alternate, so both see
the same machine load. The best round counts. The ratio is MER's tokens/s divided by
llama.cpp's, so above 1 means MER is faster.

Without MODEL arguments it runs the three benchmark models of workloads.py (the default model,
its 8-expert split and the `small` synthetic model), writing the last two into --work-dir (a
temporary directory unless given) unless MER_BENCH_SPLIT or MER_BENCH_SMALL name them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import workloads

import mer

DEFAULT_LLAMA_PYTHON = "/opt/llvenv/bin/python"
WORKER = Path(__file__).resolve().with_name("llamacpp_worker.py")
# Context and batch of llama.cpp: enough for the longest run (8 + 64 tokens) in one batch.
LLAMA_N_CTX = 512
LLAMA_N_BATCH = 512


class LlamaWorker:
    """A llamacpp_worker.py child process that runs one request at a time."""

    def __init__(self, python: str) -> None:
        if not Path(python).is_file():
            raise FileNotFoundError(
                f"{python}: Python interpreter for llama.cpp not found; pass --llama-python or set $MER_LLAMA_PYTHON"
            )
        self.process = subprocess.Popen(
            [python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def request(self, **fields: Any) -> dict[str, Any]:
        """Send one request and return its response. Raises RuntimeError when the worker reports
        an error or exits."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(fields) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"the llama.cpp worker exited with code {code} during a {fields['op']} request")
        response = json.loads(line)
        if "error" in response:
            raise RuntimeError(f"llama.cpp failed a {fields['op']} request: {response['error']}")
        return response

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def compare_model(path: Path, worker: LlamaWorker, threads: int, rounds: int) -> dict[str, Any]:
    """Measure decode and prefill of both engines on `path` and return the figures."""
    model = mer.Model(path, threads=threads)
    loaded = worker.request(op="load", path=str(path), threads=threads, n_ctx=LLAMA_N_CTX, n_batch=LLAMA_N_BATCH)
    ids = workloads.text_ids(model, max(workloads.PROMPT_TOKENS + workloads.DECODE_TOKENS, workloads.PREFILL_TOKENS))
    decode_ids = ids[: workloads.PROMPT_TOKENS + workloads.DECODE_TOKENS]
    prefill_ids = ids[: workloads.PREFILL_TOKENS]

    def mer_decode() -> float:
        return workloads.time_decode(model._core, decode_ids)

    def llama_decode() -> float:
        return worker.request(op="decode", ids=decode_ids, prompt_tokens=workloads.PROMPT_TOKENS)["seconds"]

    def mer_prefill() -> float:
        return workloads.time_prefill(model._core, prefill_ids)

    def llama_prefill() -> float:
        return worker.request(op="prefill", ids=prefill_ids)["seconds"]

    decode = _time_alternately(mer_decode, llama_decode, rounds, workloads.DECODE_TOKENS)
    prefill = _time_alternately(mer_prefill, llama_prefill, rounds, workloads.PREFILL_TOKENS)
    decode["prompt_tokens"] = workloads.PROMPT_TOKENS
    return {
        "path": str(path),
        "llama_cpp_version": loaded["llama_cpp_version"],
        "kernels": model.stats()["kernels"],
        "decode": decode,
        "prefill": prefill,
    }


def _time_alternately(run_mer, run_llama, rounds: int, tokens: int) -> dict[str, Any]:
    """Warm up both engines, run their rounds alternately, and return the best tokens/s of each."""
    run_mer()
    run_llama()
    mer_seconds, llama_seconds = [], []
    for _ in range(rounds):
        mer_seconds.append(run_mer())
        llama_seconds.append(run_llama())
    mer_tokens_per_s = tokens / min(mer_seconds)
    llama_tokens_per_s = tokens / min(llama_seconds)
    return {
        "tokens": tokens,
        "mer_tokens_per_s": mer_tokens_per_s,
        "llamacpp_tokens_per_s": llama_tokens_per_s,
        "ratio": mer_tokens_per_s / llama_tokens_per_s,
    }


def format_table(results: list[dict[str, Any]], threads: int, rounds: int) -> str:
    """Return the results as a plain-text table, one row per model."""
    header = (
        f"{'model':<34} {'decode MER':>10} {'llama.cpp':>10} {'ratio':>6}   "
        f"{'prefill MER':>11} {'llama.cpp':>10} {'ratio':>6}"
    )
    lines = [
        f"tokens/s with {threads} threads, best of {rounds} alternating rounds; ratio = MER / llama.cpp",
        header,
        "-" * len(header),
    ]
    for result in results:
        decode, prefill = result["decode"], result["prefill"]
        lines.append(
            f"{Path(result['path']).name:<34} {decode['mer_tokens_per_s']:>10.1f} "
            f"{decode['llamacpp_tokens_per_s']:>10.1f} {decode['ratio']:>6.2f}   "
            f"{prefill['mer_tokens_per_s']:>11.1f} {prefill['llamacpp_tokens_per_s']:>10.1f} {prefill['ratio']:>6.2f}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", type=Path, help="GGUF files (default: the three benchmark models)")
    parser.add_argument(
        "--llama-python",
        default=os.environ.get("MER_LLAMA_PYTHON", DEFAULT_LLAMA_PYTHON),
        help=f"Python interpreter that can import llama_cpp (default: $MER_LLAMA_PYTHON, else {DEFAULT_LLAMA_PYTHON})",
    )
    parser.add_argument(
        "--threads", type=int, default=workloads.THREADS,
        help="compute threads of both engines (default: $MER_BENCH_THREADS, else 2)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per engine and measurement (default: 3)")
    parser.add_argument("--work-dir", type=Path, help="directory for generated models (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, not {args.threads}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mer-bench-") as temporary:
        work_dir = args.work_dir or Path(temporary)
        work_dir.mkdir(parents=True, exist_ok=True)
        paths = args.models or [workloads.model_path(name, work_dir) for name in workloads.MODEL_NAMES]

        worker = LlamaWorker(args.llama_python)
        try:
            results = []
            for path in paths:
                print(f"measuring {path}", file=sys.stderr)
                results.append(compare_model(path, worker, args.threads, args.rounds))
        finally:
            worker.close()

    if args.json:
        report = {"threads": args.threads, "rounds": args.rounds, "mer_version": mer.__version__, "models": results}
        print(json.dumps(report, indent=2))
    else:
        print(format_table(results, args.threads, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
