"""Time llama.cpp's decode on a model larger than the RAM it may use: the baseline for MER's
streaming figures.

This script is opt-in and pytest does not collect it. It needs llama-cpp-python in a separate
environment (see compare_llamacpp.py) and root, to make a memory cgroup:

    python benches/llamacpp_memory_limit.py MODEL.gguf --memory-limit 12G [--cold] [--tokens 16]
        [--prompt-tokens 4] [--threads 2] [--llama-python /opt/llvenv/bin/python] [--json]

llama.cpp runs in a child process (llamacpp_worker.py) placed in a new memory cgroup (v2, or the
v1 memory controller) whose limit is --memory-limit. The limit covers the page cache of the
mapped model file too, so llama.cpp gets the same RAM as MER given a budget of that size. It
gets its best settings for a model larger than that RAM: use_mmap, and no repacking (repacking
copies the whole model into anonymous memory, which the limit does not allow). --cold drops the
page cache first. The text is mer.bench_text, tokenized by MER's tokenizer, as `mer bench` uses
it: the first --prompt-tokens ids are evaluated in one call, then --tokens ids one at a time,
and the tokens/s counts those alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mer
from mer.bench_text import BENCH_TEXT
from mer.model import parse_size
from mer.tokenizer import Tokenizer

DEFAULT_LLAMA_PYTHON = os.environ.get("MER_LLAMA_PYTHON", "/opt/llvenv/bin/python")
WORKER = Path(__file__).resolve().with_name("llamacpp_worker.py")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class MemoryCgroup:
    """A memory cgroup with a limit, removed again on exit."""

    def __init__(self, limit: int) -> None:
        name = f"mer-llamacpp-{os.getpid()}"
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            self.path = CGROUP_ROOT / name
            self.path.mkdir()
            (self.path / "memory.max").write_text(str(limit))
            self.version = 2
        else:
            self.path = CGROUP_ROOT / "memory" / name
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            self.version = 1
        self.limit = limit

    def join(self) -> None:
        """Moves the calling process into the cgroup (run in the child before exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_bytes(self) -> int | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def drop_page_cache() -> str:
    """Drops the page cache if this process is allowed to, and returns the outcome."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "dropped"
    except OSError as error:
        return f"not dropped ({error.strerror})"


def run(args: argparse.Namespace) -> dict[str, Any]:
    model_path = Path(args.model).resolve()
    metadata = mer._core.read_gguf(model_path)["metadata"]
    ids = Tokenizer.from_metadata(metadata, source=str(model_path)).encode(BENCH_TEXT)[: args.prompt_tokens + args.tokens]
    if len(ids) < args.prompt_tokens + args.tokens:
        raise SystemExit(f"the text has {len(ids)} tokens, fewer than --prompt-tokens + --tokens")

    cgroup = MemoryCgroup(parse_size(args.memory_limit))
    try:
        page_cache = drop_page_cache() if args.cold else "kept (warm run)"
        worker = subprocess.Popen(
            [args.llama_python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=cgroup.join,
        )

        def request(**fields: Any) -> dict[str, Any]:
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.write(json.dumps(fields) + "\n")
            worker.stdin.flush()
            line = worker.stdout.readline()
            if not line:
                raise RuntimeError("the llama.cpp worker exited (killed by the memory limit?)")
            response = json.loads(line)
            if "error" in response:
                raise RuntimeError(f"llama.cpp: {response['error']}")
            return response

        loaded = request(op="load", path=str(model_path), threads=args.threads, n_ctx=512, n_batch=512, repack=False)
        print(f"llama.cpp {loaded['llama_cpp_version']} opened {model_path.name}; decoding {args.tokens} tokens",
              file=sys.stderr, flush=True)
        seconds = request(op="decode", ids=ids, prompt_tokens=args.prompt_tokens)["seconds"]
        peak = cgroup.peak_bytes()
        worker.stdin.close()
        worker.wait()
    finally:
        cgroup.remove()
    return {
        "engine": "llama.cpp",
        "llama_cpp_version": loaded["llama_cpp_version"],
        "model": str(model_path),
        "memory_limit_bytes": cgroup.limit,
        "cgroup_version": cgroup.version,
        "cgroup_peak_bytes": peak,
        "use_mmap": True,
        "repack": False,
        "cold": args.cold,
        "page_cache": page_cache,
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.tokens,
        "decode_s": seconds,
        "decode_tokens_per_s": args.tokens / seconds,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="GGUF model file")
    parser.add_argument("--memory-limit", required=True, metavar="SIZE", help="memory limit of llama.cpp's cgroup, such as 12G")
    parser.add_argument("--tokens", type=int, default=16, help="decode tokens to time (default: 16)")
    parser.add_argument("--prompt-tokens", type=int, default=4, help="prompt tokens evaluated first (default: 4)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default: 2)")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before starting")
    parser.add_argument("--llama-python", default=DEFAULT_LLAMA_PYTHON, help="Python with llama-cpp-python")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("a memory cgroup needs root")
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"llama.cpp: {result['decode_tokens_per_s']:.3f} tokens/s decode under a "
              f"{result['memory_limit_bytes'] / 2**30:.1f} GiB limit ({'cold' if args.cold else 'warm'}, page cache "
              f"{result['page_cache']}, {args.threads} threads, mmap, no repack)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
