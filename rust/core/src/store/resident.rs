//! An expert store that reads every expert into RAM when the model opens.

use super::{ExpertRanges, ExpertStore, ExpertWeights, TensorRange};
use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::model::tensors::TensorLoader;
use crate::quant::MatRef;

/// One expert's three matrices, each in its own buffer.
struct ResidentExpert {
    ranges: ExpertRanges,
    gate: AlignedBuf,
    up: AlignedBuf,
    down: AlignedBuf,
}

/// Every expert of every layer, held in RAM.
pub struct ResidentStore {
    layers: Vec<Vec<ResidentExpert>>,
    bytes: u64,
}

impl ResidentStore {
    /// Reads every expert listed in `ranges` (indexed by layer, then expert).
    pub fn load(loader: &TensorLoader<'_>, ranges: Vec<Vec<ExpertRanges>>) -> Result<Self> {
        let mut bytes = 0;
        let mut layers = Vec::with_capacity(ranges.len());
        for (layer, experts) in ranges.into_iter().enumerate() {
            let mut loaded = Vec::with_capacity(experts.len());
            for (expert, ranges) in experts.into_iter().enumerate() {
                let read = |range: &TensorRange, part: &str| {
                    let what = format!("{part} of expert {expert} of layer {layer} (tensor {})", range.tensor);
                    loader.read_range(&what, range.offset, range.n_bytes as usize)
                };
                bytes += ranges.n_bytes();
                loaded.push(ResidentExpert {
                    gate: read(&ranges.gate, "gate")?,
                    up: read(&ranges.up, "up")?,
                    down: read(&ranges.down, "down")?,
                    ranges,
                });
            }
            layers.push(loaded);
        }
        Ok(ResidentStore { layers, bytes })
    }
}

fn mat<'a>(range: &TensorRange, data: &'a [u8]) -> MatRef<'a> {
    MatRef::new(range.ggml_type, range.rows, range.cols, data)
}

impl ExpertStore for ResidentStore {
    fn with_experts(
        &self,
        layer: usize,
        experts: &[usize],
        f: &mut dyn FnMut(&[ExpertWeights<'_>]) -> Result<()>,
    ) -> Result<()> {
        let in_layer = self
            .layers
            .get(layer)
            .ok_or_else(|| Error::InvalidArgument(format!("layer {layer} does not exist")))?;
        let mut weights = Vec::with_capacity(experts.len());
        for &e in experts {
            let x = in_layer
                .get(e)
                .ok_or_else(|| Error::InvalidArgument(format!("expert {e} of layer {layer} does not exist")))?;
            weights.push(ExpertWeights {
                gate: mat(&x.ranges.gate, &x.gate),
                up: mat(&x.ranges.up, &x.up),
                down: mat(&x.ranges.down, &x.down),
            });
        }
        f(&weights)
    }

    fn expert_ram_bytes(&self) -> u64 {
        self.bytes
    }
}
