//! Slot layout: where an expert's gate, up and down ranges go inside a slot, and which aligned
//! file reads fill them.
//!
//! Expert ranges in GGUF are only 32-byte aligned, but O_DIRECT needs offsets, lengths and
//! buffers aligned to 4096. So each range is read as its 4096-aligned superset into its own
//! region of the slot, and the range's data starts `offset % 4096` bytes into that region.

use super::io::{ReadChunk, DIRECT_ALIGN};
use super::{ExpertRanges, TensorRange};

/// One region of a slot: its start within the slot and its size.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub start: usize,
    pub size: usize,
}

/// The regions of a slot for the gate, up and down ranges, sized for the largest expert.
#[derive(Clone, Copy, Debug)]
pub struct SlotLayout {
    pub regions: [Region; 3],
    pub slot_bytes: usize,
}

/// The aligned read that covers `range`: (aligned file offset, bytes to read, bytes that
/// must arrive, position of the range's first byte in the read).
fn superset(range: &TensorRange) -> (u64, usize, usize, usize) {
    let align = DIRECT_ALIGN as u64;
    let start = range.offset / align * align;
    let required = (range.offset + range.n_bytes - start) as usize;
    let len = required.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    (start, len, required, (range.offset - start) as usize)
}

fn parts(ranges: &ExpertRanges) -> [&TensorRange; 3] {
    [&ranges.gate, &ranges.up, &ranges.down]
}

impl SlotLayout {
    /// Sizes each region for the largest aligned superset of its part among `experts`.
    pub fn for_experts<'a>(experts: impl Iterator<Item = &'a ExpertRanges>) -> Self {
        let mut sizes = [0usize; 3];
        for ranges in experts {
            for (size, range) in sizes.iter_mut().zip(parts(ranges)) {
                *size = (*size).max(superset(range).1);
            }
        }
        let mut start = 0;
        let regions = sizes.map(|size| {
            let region = Region { start, size };
            start += size;
            region
        });
        SlotLayout { regions, slot_bytes: start.max(DIRECT_ALIGN) }
    }

    /// Byte positions of the gate, up and down data of `ranges` inside a slot.
    pub fn data_positions(&self, ranges: &ExpertRanges) -> [usize; 3] {
        let mut positions = [0; 3];
        for ((position, region), range) in positions.iter_mut().zip(&self.regions).zip(parts(ranges)) {
            *position = region.start + superset(range).3;
        }
        positions
    }

    /// Plans the reads that fill a slot starting at `slot` with `ranges`, split into chunks of at
    /// most `chunk_bytes` (a multiple of 4096).
    pub fn chunks(&self, ranges: &ExpertRanges, slot: *mut u8, chunk_bytes: usize) -> Vec<ReadChunk> {
        let mut chunks = Vec::new();
        for (region, range) in self.regions.iter().zip(parts(ranges)) {
            let (file_start, len, required, _) = superset(range);
            let mut done = 0;
            while done < len {
                let n = chunk_bytes.min(len - done);
                chunks.push(ReadChunk {
                    offset: file_start + done as u64,
                    len: n,
                    required: required.saturating_sub(done).min(n),
                    // region.start + done + n <= region end <= slot_bytes, because the region was
                    // sized for the largest superset of this part. The reader writes through it.
                    dst: slot.wrapping_add(region.start + done),
                });
                done += n;
            }
        }
        chunks
    }
}
