"""The `bench` command: its arguments, and the report on stdout as text, a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .bench import (
    BUILT_IN_TEXT, DEFAULT_PROMPT_TOKENS, DEFAULT_TOKENS, MEMORY_PROBE_BYTES, BenchSettings, run_bench,
)
from .bench_text import BENCH_TEXT
from .default_model import resolve_model_path
from .model import parse_size

BENCH_EPILOG = """\
The bound is tokens/s <= 1 / max((1 - h) * E / D, W / M). h is the decode hit rate and E the
expert bytes a token uses (layers x experts used per token x bytes per expert). D is the read
bandwidth of the model file: the larger of a probe of up to 2 GiB of reads through the run's
I/O backend, taken right after each run, and the rate the run's own reads reached. W is the
resident weights plus E, and M the memory read bandwidth, measured once with 512 MiB. W counts
the whole resident set, the embedding table included, so it is an upper estimate.

--json prints one object. decode_tokens_per_s, prompt_tokens_per_s, hit_rate, io_share and
bytes_read are the run's statistics, over decode tokens except for the prompt's speed.
disk_bytes_per_s is bytes read / decode time and memory_bytes_per_s is W x decode tokens/s: the
bandwidths reached. disk_bandwidth_measured and memory_bandwidth_measured are D and M, and
disk_bandwidth_probe is the probe alone. With --sweep, the fields that differ between budgets
are in "runs", one object per budget.

--llamacpp-json FILE is a JSON object of RAM budget to llama.cpp decode tokens/s at that
budget, such as {"4G": 1.9, "8G": 3.2}. Measure them on the same model, text and threads, with
the memory of llama.cpp limited to the budget plus the resident weights, for example in a cgroup
with memory.max set. benches/compare_llamacpp.py does not limit memory.
"""


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `bench` command's arguments to `parser`."""
    from .cli import _byte_size, _positive_int

    parser.add_argument("--model", metavar="PATH", help="GGUF model file (default: $MER_MODEL or the default model)")
    parser.add_argument("--text", metavar="FILE",
                        help="UTF-8 text to feed (default: the opening of Alice's Adventures in Wonderland, "
                             "about 330 tokens)")
    parser.add_argument("--tokens", type=_positive_int, default=DEFAULT_TOKENS, metavar="N",
                        help=f"decode tokens, fed one at a time after the prompt (default: {DEFAULT_TOKENS})")
    parser.add_argument("--prompt-tokens", type=_positive_int, default=DEFAULT_PROMPT_TOKENS, metavar="P",
                        help=f"tokens of the text run first as one prompt (default: {DEFAULT_PROMPT_TOKENS})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--ram-budget", type=_byte_size, default=None, metavar="SIZE",
                        help="RAM for expert slots, such as 8G or 512M (binary units) "
                             "(default: every expert gets a slot)")
    budget.add_argument("--sweep", type=_size_list, default=None, metavar="SIZES",
                        help="run once per RAM budget in this comma-separated list, such as 4G,8G,12G,16G, "
                             "and print a table")
    parser.add_argument("--io-backend", choices=["auto", "io_uring", "pread", "buffered"], default="auto",
                        help="how experts are read, as for generate (default: auto)")
    parser.add_argument("--prefetch", choices=["on", "off"], default="on",
                        help="prefetch the experts the next layer is predicted to use (default: on)")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="compute threads, also used to measure memory bandwidth (default: physical cores)")
    parser.add_argument("--cold", action="store_true",
                        help="read experts with O_DIRECT only, and drop the page cache before each run where "
                             "that is allowed (root and a writable /proc/sys/vm/drop_caches)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="OUT.png",
                        help="with --sweep, draw decode tokens/s and hit rate against the RAM budget "
                             "(needs matplotlib: pip install \"mer[plot]\")")
    parser.add_argument("--llamacpp-json", metavar="FILE",
                        help="with --sweep, llama.cpp's decode tokens/s per RAM budget to show next to MER's")


def _size_list(text: str) -> list[int]:
    from .cli import _byte_size

    sizes = [_byte_size(part.strip()) for part in text.split(",") if part.strip()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected sizes such as 4G,8G,12G")
    return sizes


def run_bench_command(args: argparse.Namespace) -> int:
    """Run the bench that `args` (from `add_bench_arguments`) describe and print its report."""
    if (args.plot or args.llamacpp_json) and not args.sweep:
        raise ValueError("--plot and --llamacpp-json need --sweep")
    if args.plot:
        from .bench_plot import load_pyplot

        # Fail before the runs, which can take long, rather than after them.
        load_pyplot()
    llamacpp = read_llamacpp_json(args.llamacpp_json) if args.llamacpp_json else {}

    text, text_source = BENCH_TEXT, BUILT_IN_TEXT
    if args.text:
        try:
            text, text_source = Path(args.text).read_text(encoding="utf-8"), args.text
        except UnicodeDecodeError as e:
            raise ValueError(f"{args.text}: --text must be UTF-8, but byte {e.start} is not: {e.reason}") from None
    settings = BenchSettings(
        model=resolve_model_path(args.model),
        text=text,
        text_source=text_source,
        tokens=args.tokens,
        prompt_tokens=args.prompt_tokens,
        io_backend=args.io_backend,
        prefetch=args.prefetch == "on",
        threads=args.threads,
        cold=args.cold,
    )
    budgets: list[int | None] = list(args.sweep) if args.sweep else [args.ram_budget]
    report = run_bench(settings, budgets)
    for run in report["runs"]:
        if run["ram_budget_bytes"] in llamacpp:
            run["llamacpp_tokens_per_s"] = llamacpp[run["ram_budget_bytes"]]

    if args.json:
        if not args.sweep:
            single = report.pop("runs")[0]
            report = {**report, **single}
        print(json.dumps(report))
    elif args.sweep:
        print(format_sweep(report))
    else:
        print(format_run(report, report["runs"][0]))
    if args.plot:
        from .bench_plot import plot_sweep

        plot_sweep(report, args.plot, llamacpp)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def read_llamacpp_json(path: str) -> dict[int, float]:
    """Read a JSON object of RAM budget ("8G" or bytes) to llama.cpp decode tokens/s. Raises
    ValueError naming the file and the invalid entry."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object of RAM budget to tokens/s, such as {{\"8G\": 3.2}}")
    figures = {}
    for budget, tokens_per_s in data.items():
        if isinstance(tokens_per_s, bool) or not isinstance(tokens_per_s, (int, float)) or tokens_per_s <= 0:
            raise ValueError(f"{path}: the tokens/s of budget {budget!r} must be a number > 0, not {tokens_per_s!r}")
        figures[parse_size(budget)] = float(tokens_per_s)
    return figures


def format_run(report: dict[str, Any], run: dict[str, Any]) -> str:
    """Return the report of one run as aligned lines of text."""
    rows = [
        ("model", _describe_model(report)),
        ("text", f"{report['text']}; {report['text_tokens']} tokens"),
        ("run", f"{report['prompt_tokens']} prompt tokens, then {report['tokens']} decode tokens one at a time; "
                f"{_threads(run['threads'])}, {run['kernels']} kernels"),
        ("memory", f"RAM budget {_budget(run['ram_budget_bytes'])}, {run['slots']} slots of "
                   f"{_size(run['slot_bytes'])}; resident weights {_size(run['resident_bytes'])}; "
                   f"peak RSS {_size(run['peak_rss_bytes'])}"),
        ("prompt", f"{run['prompt_tokens_per_s']:.2f} tokens/s"),
        ("decode", f"{run['decode_tokens_per_s']:.2f} tokens/s; bound {run['bound_tokens_per_s']:.2f} tokens/s "
                   f"({run['bound_limited_by']}-bound); {run['fraction_of_bound']:.3f} of the bound"),
        ("experts", f"hit rate {run['hit_rate']:.3f}, I/O share {run['io_share']:.3f}, {_size(run['bytes_read'])} "
                    f"read, {_rate(run['disk_bytes_per_s'])} from disk during decode"),
        ("routing", _describe_overlap(run["routing_overlap"])),
        ("prefetch", _describe_prefetch(run)),
        ("I/O", _describe_io(run)),
        ("bandwidth", f"disk {_rate(run['disk_bandwidth_measured'])} (the larger of the probe after the run, "
                      f"{_rate(run['disk_bandwidth_probe'])} over {_size(report['disk_bandwidth_bytes'])} of the "
                      f"model file through {report['disk_bandwidth_backend']}, and the rate the run reached); "
                      f"memory {_rate(report['memory_bandwidth_measured'])} ({MEMORY_PROBE_BYTES >> 20} MiB, "
                      f"{_threads(run['threads'])})"),
        ("per token", f"experts {_size(run['expert_bytes_per_token'])}, weights {_size(run['bytes_per_token'])}: "
                      "the whole resident set, embedding table included, so an upper estimate"),
    ]
    return _align(rows)


def format_sweep(report: dict[str, Any]) -> str:
    """Return the report of a sweep: the shared settings, then a table with one row per budget."""
    runs = report["runs"]
    first = runs[0]
    with_llamacpp = any("llamacpp_tokens_per_s" in run for run in runs)
    rows = [
        ("model", _describe_model(report)),
        ("text", f"{report['text']}; {report['text_tokens']} tokens"),
        ("run", f"{report['prompt_tokens']} prompt tokens, then {report['tokens']} decode tokens one at a time; "
                f"{_threads(first['threads'])}, {first['kernels']} kernels"),
        ("I/O", _describe_io(first)),
        ("bandwidth", f"disk probed through {report['disk_bandwidth_backend']} after each run (the disk MB/s "
                      f"column: the larger of the probe and the rate the run reached); memory "
                      f"{_rate(report['memory_bandwidth_measured'])}"),
        ("bound", "1 / max((1 - h) E / D, W / M). W counts the whole resident set plus E, so it is an "
                  "upper estimate"),
    ]
    lines = _align(rows).splitlines() + [""]
    header = (f"{'RAM budget':>12} {'decode t/s':>10} {'bound t/s':>10} {'fraction':>8} {'hit rate':>8} "
              f"{'I/O share':>9} {'read MB/s':>9} {'disk MB/s':>9} {'peak RSS':>10}")
    if with_llamacpp:
        header += f" {'llama.cpp t/s':>13}"
    lines += [header, "-" * len(header)]
    for run in runs:
        line = (f"{_budget(run['ram_budget_bytes']):>12} {run['decode_tokens_per_s']:>10.2f} "
                f"{run['bound_tokens_per_s']:>10.2f} {run['fraction_of_bound']:>8.3f} {run['hit_rate']:>8.3f} "
                f"{run['io_share']:>9.3f} {run['disk_bytes_per_s'] / 1e6:>9.1f} "
                f"{run['disk_bandwidth_measured'] / 1e6:>9.1f} {_size(run['peak_rss_bytes']):>10}")
        if with_llamacpp:
            figure = run.get("llamacpp_tokens_per_s")
            line += "" if figure is None else f" {figure:>13.2f}"
        lines.append(line)
    return "\n".join(lines)


def _align(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _describe_model(report: dict[str, Any]) -> str:
    if report["n_expert"]:
        experts = f"{report['n_expert']} experts per layer, {report['n_expert_used']} used per token"
    else:
        experts = "dense"
    return f"{report['model']} ({report['architecture']}, {report['n_layer']} layers, {experts})"


def _describe_overlap(overlap: float | None) -> str:
    if overlap is None:
        return "no router (dense model)"
    return f"{overlap:.3f} of a token's routed experts were routed for the previous token too (same layer)"


def _describe_prefetch(run: dict[str, Any]) -> str:
    if not run["prefetch"]:
        return "off"
    return (f"on, governor {run['governor_state']}; {run['prefetch_issued']} issued, {run['prefetch_used']} used "
            f"({run['prefetch_hits']} in time), precision {run['prefetch_precision']:.2f}, predictor recall "
            f"{run['predictor_recall']:.2f}, {_size(run['prefetch_wasted_bytes'])} wasted")


def _describe_io(run: dict[str, Any]) -> str:
    backend = f"{run['io_backend']} backend ({run['io_backend_reason']})"
    if run["expert_reads_bypass_page_cache"]:
        reads = "expert reads use O_DIRECT: the page cache was not used for expert reads"
    else:
        reads = "expert reads go through the page cache"
    if not run["cold"]:
        return f"{backend}; {reads}; warm run"
    dropped = "dropped" if run["page_cache_dropped"] else "not dropped"
    return f"{backend}; {reads}; cold run, page cache {dropped} ({run['page_cache_reason']})"


def _budget(n: int | None) -> str:
    if n is None:
        return "none"
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n:,} B"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / (1 << 10):.1f} KiB"


def _threads(n: int) -> str:
    return "1 thread" if n == 1 else f"{n} threads"


def _rate(bytes_per_s: float) -> str:
    if bytes_per_s >= 1e9:
        return f"{bytes_per_s / 1e9:.2f} GB/s"
    return f"{bytes_per_s / 1e6:.1f} MB/s"
