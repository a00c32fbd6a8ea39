"""Replay a routing trace through the slot table, an eviction policy and the prefetcher.

A routing trace is a JSON Lines file written by ``generate --trace FILE``. After a header line,
each line is one FFN step of the run: the experts each token was routed to, the store requests
of the step, the predictor's guesses and the prefetches issued. This module reads and checks
the file, and the Rust core (``mer_core::store::replay``) replays the steps without reading or
computing anything. With the traced run's slot count and policy and prefetch off, the replay counts the
same hits and misses as the live run.

The replay assumes that every read, and so every prefetch, completes the moment it is issued,
before the next request. Its prefetch figures are therefore an upper bound on what the live
store gets from the same guesses. With prefetch on, each step prefetches every guess it made
(top-k plus margin), where the live store's governor may prefetch fewer or none. Bytes read are
reads times the header's ``expert_bytes``, the expert's bytes in the file, while the live store
reads each range rounded out to 4096-byte boundaries, so its byte counts are a little higher.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _core
from .model import parse_size

log = logging.getLogger("mer")

TRACE_FORMAT = "mer-trace"
TRACE_VERSION = 1
POLICIES = ("per-layer-lru", "lru")

# Header fields the replay needs, with their JSON types. "slot_bytes", "predictor",
# "lookahead" and "margin" are optional.
_HEADER_FIELDS: dict[str, type] = {
    "format": str,
    "version": int,
    "model": str,
    "n_layer": int,
    "n_expert": int,
    "n_expert_used": int,
    "expert_bytes": int,
    "slots": int,
    "policy": str,
    "prefetch": bool,
}
_STEP_FIELDS = ("batch", "phase", "layer", "routed", "groups", "predicted", "prefetched")


@dataclass
class Trace:
    """A routing trace read from a file: its header and its steps, as the core takes them."""

    path: Path
    header: dict[str, Any]
    # (line, batch, phase, layer, routed, groups, predicted, prefetched) per step.
    steps: list[tuple]


class _LineError(ValueError):
    """An invalid value on one line of the trace. The reader adds the path and line number."""


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and check a routing trace. Raises ValueError naming the file and line of the first
    invalid value (unknown format or version, invalid JSON, a missing field, a value of the
    wrong type), and FileNotFoundError for a missing file. Layer and expert ranges are checked
    by the replay.

    A last step line with no newline that is not valid JSON was cut off by a run that stopped
    while writing, so it is skipped with a warning."""
    path = Path(path)
    header: dict[str, Any] | None = None
    steps: list[tuple] = []
    with path.open(encoding="utf-8", errors="surrogateescape") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                if header is not None and not text.endswith("\n") and not _is_json(text):
                    log.warning("%s: line %d is cut off (the run that wrote it stopped mid-line); replaying "
                                "the %d steps before it", path, number, len(steps))
                    break
                value = _parse_json(text.rstrip("\r\n"))
                if header is None:
                    header = _check_header(value)
                else:
                    steps.append(_check_step(number, value))
            except _LineError as e:
                raise ValueError(f"{path}: line {number}: {e}") from None
    if header is None:
        raise ValueError(f"{path}: the file is empty: expected a {TRACE_FORMAT} header on line 1")
    return Trace(path, header, steps)


def replay_trace(
    trace: Trace | str | os.PathLike[str],
    *,
    slots: int | None = None,
    ram_budget: str | int | None = None,
    policy: str | None = None,
    prefetch: bool | None = None,
) -> dict[str, Any]:
    """Replay a routing trace and return its counts.

    `slots` is the slot count. `ram_budget` (bytes, or a string such as "64M") sets it instead
    to the budget divided by the slot size. The slot size is the header's ``slot_bytes`` (the
    live store's slot: each of an expert's three ranges rounded out to 4096-byte boundaries),
    or ``expert_bytes`` in a trace without it, which can give more slots than the live store
    had. Without either, the traced run's slot count is used. `policy` ("per-layer-lru" or
    "lru") and `prefetch` default to the traced run's.

    Returns a dict with the settings, ``prompt``, ``decode`` and ``total`` counts (hits, misses,
    hit_rate, reads, bytes_read), the prefetch counts, precision, recall and recall per layer.
    Raises ValueError for an invalid trace or setting, naming the line of an invalid step.
    """
    if not isinstance(trace, Trace):
        trace = read_trace(trace)
    header = trace.header
    if slots is not None and ram_budget is not None:
        raise ValueError("slots and ram_budget are both set: set one of them")
    slot_bytes = header.get("slot_bytes", header["expert_bytes"])
    if ram_budget is not None:
        budget = parse_size(ram_budget)
        if "slot_bytes" not in header:
            log.warning(
                "%s: the trace has no slot_bytes, so slots are counted from expert_bytes (%d). The live store "
                "rounds each expert's ranges out to 4096 bytes, so it may have had fewer slots",
                trace.path, header["expert_bytes"],
            )
        if slot_bytes <= 0:
            raise ValueError(f"{trace.path}: the slot size is {slot_bytes} bytes, so a RAM budget cannot set the slots: use slots")
        slots = budget // slot_bytes
    elif slots is None:
        slots = header["slots"]
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 0:
        raise ValueError(f"slots must be an integer >= 0, got {slots!r}")
    # As in the live store, more slots than experts would stay empty.
    slots = min(slots, header["n_layer"] * header["n_expert"])
    policy = header["policy"] if policy is None else policy
    prefetch = header["prefetch"] if prefetch is None else prefetch

    try:
        counts = _core.replay_trace(
            header["n_layer"], header["n_expert"], header["n_expert_used"], header["expert_bytes"], trace.steps,
            slots=slots, policy=policy, prefetch=bool(prefetch),
        )
    except ValueError as e:
        raise ValueError(f"{trace.path}: {e}") from None

    totals = {key: counts["prompt"][key] + counts["decode"][key] for key in ("hits", "misses", "reads", "bytes_read")}
    for phase in (counts["prompt"], counts["decode"], totals):
        phase["hit_rate"] = _ratio(phase["hits"], phase["hits"] + phase["misses"])
    return {
        "trace": str(trace.path),
        "model": header["model"],
        "n_layer": header["n_layer"],
        "n_expert": header["n_expert"],
        "n_expert_used": header["n_expert_used"],
        "expert_bytes": header["expert_bytes"],
        "slot_bytes": slot_bytes,
        "ram_budget_bytes": None if ram_budget is None else parse_size(ram_budget),
        **counts,
        "total": totals,
    }


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _LineError(f"invalid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise _LineError("invalid step: its JSON nests too deeply to read") from None
    except ValueError as e:
        # Python refuses integers of more than 4300 digits (sys.set_int_max_str_digits).
        raise _LineError(f"invalid JSON: {e}") from None


def _check_header(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("format") != TRACE_FORMAT:
        raise _LineError(f"not a routing trace: expected a header object with \"format\": \"{TRACE_FORMAT}\"")
    if value.get("version") != TRACE_VERSION:
        raise _LineError(
            f"unsupported trace version {value.get('version')!r}: this version of mer reads version {TRACE_VERSION}"
        )
    for name, kind in _HEADER_FIELDS.items():
        if name not in value:
            raise _LineError(f"missing header field {name!r}")
        field = value[name]
        if kind is int:
            _require_count(f"header field {name!r}", field)
        elif not isinstance(field, kind):
            raise _LineError(f"header field {name!r} must be a {kind.__name__}, not {field!r}")
    if "slot_bytes" in value:
        _require_count("header field 'slot_bytes'", value["slot_bytes"])
    # The replay allocates per layer and per expert, and sums bytes in 64-bit integers, so
    # shapes far beyond any real model are rejected rather than attempted.
    for name, limit in _HEADER_LIMITS.items():
        if value[name] > limit:
            raise _LineError(f"header field {name!r} is {value[name]}, more than the {limit} a replay accepts")
    experts = value["n_layer"] * value["n_expert"]
    if experts > MAX_EXPERTS:
        raise _LineError(
            f"n_layer x n_expert is {experts} experts, more than the {MAX_EXPERTS} a replay accepts"
        )
    return value


_HEADER_LIMITS = {"n_layer": 1 << 16, "n_expert": 1 << 16, "n_expert_used": 1 << 16, "expert_bytes": 1 << 44}
# The replay keeps a slot table entry per expert. Models with the most experts today have tens of
# thousands, so this leaves room while keeping the table small.
MAX_EXPERTS = 1 << 20


def _check_step(number: int, value: Any) -> tuple:
    if not isinstance(value, dict):
        raise _LineError(f"expected a step object, not {type(value).__name__}")
    for name in _STEP_FIELDS:
        if name not in value:
            raise _LineError(f"missing step field {name!r}")
    _require_count("batch", value["batch"])
    _require_count("layer", value["layer"])
    if value["phase"] not in ("prompt", "decode"):
        raise _LineError(f"phase must be \"prompt\" or \"decode\", not {value['phase']!r}")
    routed = _expert_lists("routed", value["routed"])
    groups = _expert_lists("groups", value["groups"])

    predicted_by_layer = value["predicted"]
    if not isinstance(predicted_by_layer, dict):
        raise _LineError(f"predicted must be an object of layer to experts, not {predicted_by_layer!r}")
    predicted = []
    for key, experts in predicted_by_layer.items():
        # A 64-bit count has at most 19 digits, and the length check keeps int() fast.
        if not (key.isascii() and key.isdigit() and len(key) <= 19):
            raise _LineError(f"predicted has key {key[:40]!r}: keys must be layer numbers")
        layer = int(key)
        _require_count("a predicted layer", layer)
        predicted.append((layer, _expert_list(f"predicted[{key!r}]", experts)))

    prefetched = value["prefetched"]
    if not isinstance(prefetched, list):
        raise _LineError(f"prefetched must be a list of [layer, expert] pairs, not {prefetched!r}")
    for pair in prefetched:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise _LineError(f"prefetched must be a list of [layer, expert] pairs, but has {pair!r}")
        _require_count("prefetched layer", pair[0])
        _require_count("prefetched expert", pair[1])
    prefetched = [(layer, expert) for layer, expert in prefetched]
    return (number, value["batch"], value["phase"], value["layer"], routed, groups, predicted, prefetched)


def _expert_lists(name: str, value: Any) -> list[list[int]]:
    if not isinstance(value, list):
        raise _LineError(f"{name} must be a list of expert lists, not {value!r}")
    return [_expert_list(name, experts) for experts in value]


def _expert_list(name: str, value: Any) -> list[int]:
    if not isinstance(value, list):
        raise _LineError(f"{name} must contain lists of expert ids, not {value!r}")
    for expert in value:
        _require_count(f"an expert id in {name}", expert)
    return value


def _require_count(name: str, value: Any) -> None:
    # JSON true and false load as bool, a subclass of int, and are not counts. The bound keeps
    # every count within the core's 64-bit integers.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise _LineError(f"{name} must be an integer from 0 to 2**63 - 1, not {value!r}")
