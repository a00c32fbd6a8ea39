//! Locating each layer's experts in the file, in any of the three layouts: merged 3-D expert
//! tensors, legacy per-expert tensors, or a dense FFN treated as a single expert.

use super::config::Config;
use super::tensors::TensorLoader;
use crate::error::{Error, Result};
use crate::gguf::TensorInfo;
use crate::store::{ExpertRanges, TensorRange};

/// Finds the expert ranges of every layer: `result[layer][expert]`.
pub fn locate_experts(loader: &TensorLoader<'_>, config: &Config) -> Result<Vec<Vec<ExpertRanges>>> {
    (0..config.n_layer).map(|layer| locate_layer(loader, config, layer)).collect()
}

fn locate_layer(loader: &TensorLoader<'_>, config: &Config, layer: usize) -> Result<Vec<ExpertRanges>> {
    let prefix = format!("blk.{layer}");
    if !config.is_moe() {
        return Ok(vec![dense_ffn(loader, config, &prefix)?]);
    }
    if loader.has(&format!("{prefix}.ffn_gate_exps.weight")) {
        return merged_experts(loader, config, &prefix);
    }
    if loader.has(&format!("{prefix}.ffn_gate.0.weight")) {
        return (0..config.n_expert).map(|e| legacy_expert(loader, config, &prefix, e)).collect();
    }
    Err(Error::format(
        &loader.gguf.path,
        None,
        format!("layer {layer} has neither {prefix}.ffn_gate_exps.weight nor {prefix}.ffn_gate.0.weight"),
    ))
}

/// Reads the FFN width from the gate tensor. `feed_forward_length` may describe a different FFN
/// (the dense layers of a mixed model), so the tensor is the reliable source.
fn ffn_width(loader: &TensorLoader<'_>, name: &str, min_dims: usize) -> Result<usize> {
    let gguf = loader.gguf;
    let info = gguf.tensor(name).ok_or_else(|| Error::format(&gguf.path, None, format!("missing tensor {name}")))?;
    match info.dims.get(1) {
        Some(&n) if info.dims.len() >= min_dims => Ok(n as usize),
        _ => Err(Error::format(&gguf.path, info.index_offset, format!("tensor {name} has shape {:?}", info.dims))),
    }
}

fn whole(info: &TensorInfo, rows: usize, cols: usize) -> TensorRange {
    TensorRange {
        tensor: info.name.clone(),
        offset: info.offset,
        n_bytes: info.n_bytes,
        ggml_type: info.ggml_type,
        rows,
        cols,
    }
}

fn dense_ffn(loader: &TensorLoader<'_>, config: &Config, prefix: &str) -> Result<ExpertRanges> {
    let n_embd = config.n_embd;
    let gate_name = format!("{prefix}.ffn_gate.weight");
    let n_ff = ffn_width(loader, &gate_name, 2)?;
    let gate = loader.expect(&gate_name, &[n_embd, n_ff])?;
    let up = loader.expect(&format!("{prefix}.ffn_up.weight"), &[n_embd, n_ff])?;
    let down = loader.expect(&format!("{prefix}.ffn_down.weight"), &[n_ff, n_embd])?;
    Ok(ExpertRanges { gate: whole(gate, n_ff, n_embd), up: whole(up, n_ff, n_embd), down: whole(down, n_embd, n_ff) })
}

fn legacy_expert(loader: &TensorLoader<'_>, config: &Config, prefix: &str, e: usize) -> Result<ExpertRanges> {
    let n_embd = config.n_embd;
    let gate_name = format!("{prefix}.ffn_gate.{e}.weight");
    let n_ff = ffn_width(loader, &gate_name, 2)?;
    let gate = loader.expect(&gate_name, &[n_embd, n_ff])?;
    let up = loader.expect(&format!("{prefix}.ffn_up.{e}.weight"), &[n_embd, n_ff])?;
    let down = loader.expect(&format!("{prefix}.ffn_down.{e}.weight"), &[n_ff, n_embd])?;
    Ok(ExpertRanges { gate: whole(gate, n_ff, n_embd), up: whole(up, n_ff, n_embd), down: whole(down, n_embd, n_ff) })
}

fn merged_experts(loader: &TensorLoader<'_>, config: &Config, prefix: &str) -> Result<Vec<ExpertRanges>> {
    let (n_embd, n_expert) = (config.n_embd, config.n_expert);
    let gate_name = format!("{prefix}.ffn_gate_exps.weight");
    let n_ff = ffn_width(loader, &gate_name, 3)?;
    let gate = loader.expect(&gate_name, &[n_embd, n_ff, n_expert])?;
    let up = loader.expect(&format!("{prefix}.ffn_up_exps.weight"), &[n_embd, n_ff, n_expert])?;
    let down = loader.expect(&format!("{prefix}.ffn_down_exps.weight"), &[n_ff, n_embd, n_expert])?;

    // The expert is the outermost dimension, so expert e is the e-th equal slice of each tensor.
    let slice = |info: &TensorInfo, e: usize, rows: usize, cols: usize| {
        let per_expert = info.n_bytes / n_expert as u64;
        TensorRange {
            tensor: info.name.clone(),
            offset: info.offset + e as u64 * per_expert,
            n_bytes: per_expert,
            ggml_type: info.ggml_type,
            rows,
            cols,
        }
    };
    Ok((0..n_expert)
        .map(|e| ExpertRanges {
            gate: slice(gate, e, n_ff, n_embd),
            up: slice(up, e, n_ff, n_embd),
            down: slice(down, e, n_embd, n_ff),
        })
        .collect())
}
