//! `replay_trace`: replays the steps of a routing trace through the slot table, with no reads.
//! The core side is `mer_core::store::replay`, and `mer.replay` reads and checks the JSON lines.

use mer_core::store::replay::{replay, ReplayOptions, TraceShape, TraceStep};
use mer_core::store::ExpertId;
use mer_core::Phase;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::run_detached;

/// One step as `mer.replay` passes it: (line, batch, phase, layer, routed, groups, predicted,
/// prefetched).
type StepTuple = (usize, u64, String, usize, Vec<Vec<usize>>, Vec<Vec<usize>>, Vec<(usize, Vec<usize>)>, Vec<(usize, usize)>);

fn to_step(step: StepTuple) -> PyResult<TraceStep> {
    let (line, batch, phase, layer, routed, groups, predicted, prefetched) = step;
    let phase = match phase.as_str() {
        "prompt" => Phase::Prompt,
        "decode" => Phase::Decode,
        other => return Err(PyValueError::new_err(format!("line {line}: phase must be \"prompt\" or \"decode\", not {other:?}"))),
    };
    let prefetched = prefetched.into_iter().map(|(layer, expert)| ExpertId { layer, expert }).collect();
    Ok(TraceStep { line, batch, phase, layer, routed, groups, predicted, prefetched })
}

/// Replays `steps` through a fresh slot table of `slots` slots with eviction `policy`
/// ("per-layer-lru" or "lru"), prefetching each step's guesses when `prefetch` is true. Every
/// read completes at once. Each step is a tuple (line, batch, phase, layer, routed, groups,
/// predicted, prefetched), with `predicted` a list of (target layer, experts) and `prefetched`
/// a list of (layer, expert). An invalid step or setting raises ValueError naming its line.
///
/// Returns a dict: slots (after cutting to one per expert), policy, prefetch, steps, prompt and
/// decode (hits, misses, reads, bytes_read), prefetch_issued, prefetch_used, prefetch_hits,
/// prefetch_wasted_bytes, precision, recall, recall_per_layer, routed and predicted_routed
/// (per layer), and recorded_prefetches.
#[pyfunction]
#[pyo3(signature = (n_layer, n_expert, n_expert_used, expert_bytes, steps, *, slots, policy, prefetch))]
#[allow(clippy::too_many_arguments)]
fn replay_trace<'py>(
    py: Python<'py>,
    n_layer: usize,
    n_expert: usize,
    n_expert_used: usize,
    expert_bytes: u64,
    steps: Vec<StepTuple>,
    slots: usize,
    policy: String,
    prefetch: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let steps = steps.into_iter().map(to_step).collect::<PyResult<Vec<_>>>()?;
    let shape = TraceShape { n_layer, n_expert, n_expert_used, expert_bytes };
    let options = ReplayOptions { slots, policy, prefetch };
    let report = run_detached(py, || replay(shape, &steps, &options))?;

    let out = PyDict::new(py);
    out.set_item("slots", report.slots)?;
    out.set_item("policy", report.policy)?;
    out.set_item("prefetch", report.prefetch)?;
    out.set_item("steps", report.steps)?;
    for (name, counters) in [("prompt", &report.stats.prompt), ("decode", &report.stats.decode)] {
        let phase = PyDict::new(py);
        phase.set_item("hits", counters.hits)?;
        phase.set_item("misses", counters.misses)?;
        phase.set_item("reads", counters.reads)?;
        phase.set_item("bytes_read", counters.bytes_read)?;
        out.set_item(name, phase)?;
    }
    let prefetch = &report.stats.prefetch;
    out.set_item("prefetch_issued", prefetch.issued)?;
    out.set_item("prefetch_used", prefetch.used)?;
    out.set_item("prefetch_hits", prefetch.hits)?;
    out.set_item("prefetch_wasted_bytes", prefetch.wasted_bytes)?;
    out.set_item("precision", prefetch.precision())?;
    out.set_item("recall", prefetch.recall())?;
    out.set_item("recall_per_layer", prefetch.recall_per_layer())?;
    out.set_item("routed", prefetch.routed.clone())?;
    out.set_item("predicted_routed", prefetch.predicted_routed.clone())?;
    out.set_item("recorded_prefetches", report.recorded_prefetches)?;
    Ok(out)
}

/// Adds the functions of this file to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(replay_trace, m)?)?;
    Ok(())
}
