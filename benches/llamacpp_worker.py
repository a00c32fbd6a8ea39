"""Time llama.cpp through llama-cpp-python for compare_llamacpp.py, which starts this script in
the Python environment that has llama-cpp-python and sends it requests.

The script needs only the standard library and llama_cpp. It reads one JSON request per line on
stdin and writes one JSON response per line on stdout:

* {"op": "load", "path": P, "threads": T, "n_ctx": C, "n_batch": B} opens the model and returns
  {"llama_cpp_version": V}. An optional "repack": false turns off llama.cpp's repacking of
  weights into its own buffers, which copies the whole model into RAM and so fails when the
  model is larger than RAM.
* {"op": "decode", "ids": [...], "prompt_tokens": N} evaluates the first N ids on an empty
  context, then the rest one token at a time, and returns {"seconds": S} for the rest.
* {"op": "prefill", "ids": [...]} evaluates the ids in one eval call on an empty context and
  returns {"seconds": S}.

A failed request returns {"error": MESSAGE}. The script ends at the end of its input.
"""

from __future__ import annotations

import json
import sys
import time


def open_model(request: dict):
    import llama_cpp
    import llama_cpp.llama_cpp as low_level

    if not request.get("repack", True):
        # Llama() reads its defaults from this function and has no argument for repacking.
        defaults = low_level.llama_model_default_params

        def without_repack():
            params = defaults()
            params.use_extra_bufts = False
            return params

        low_level.llama_model_default_params = without_repack
    threads = request["threads"]
    llm = llama_cpp.Llama(
        model_path=request["path"],
        n_ctx=request["n_ctx"],
        n_batch=request["n_batch"],
        n_threads=threads,
        n_threads_batch=threads,
        use_mmap=True,
        verbose=False,
    )
    return llm, {"llama_cpp_version": llama_cpp.__version__}


def time_decode(llm, ids: list[int], prompt_tokens: int) -> float:
    llm.reset()
    llm.eval(ids[:prompt_tokens])
    start = time.perf_counter()
    for token in ids[prompt_tokens:]:
        llm.eval([token])
    return time.perf_counter() - start


def time_prefill(llm, ids: list[int]) -> float:
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    return time.perf_counter() - start


def main() -> None:
    llm = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "load":
                llm = None  # Free the previous model before opening the next.
                llm, response = open_model(request)
            elif llm is None:
                response = {"error": f"{request['op']} requested before a model was loaded"}
            elif request["op"] == "decode":
                response = {"seconds": time_decode(llm, request["ids"], request["prompt_tokens"])}
            elif request["op"] == "prefill":
                response = {"seconds": time_prefill(llm, request["ids"])}
            else:
                response = {"error": f"unknown op {request['op']!r}: expected load, decode or prefill"}
        except Exception as error:  # noqa: BLE001 - any failure goes back to the parent as text.
            response = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(response), flush=True)


if __name__ == "__main__":
    main()
