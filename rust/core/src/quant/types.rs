//! The ggml tensor type table: names, block sizes and byte sizes of every type a GGUF file can
//! declare, whether or not MER computes with it.

use std::fmt;

/// A ggml tensor type id as stored in a GGUF tensor index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

/// Name, elements per block and bytes per block, indexed by type id. `None` marks ids that ggml
/// removed; readers reject them.
const TYPE_TABLE: [Option<(&str, u64, u64)>; 42] = [
    Some(("F32", 1, 4)),
    Some(("F16", 1, 2)),
    Some(("Q4_0", 32, 18)),
    Some(("Q4_1", 32, 20)),
    None,
    None,
    Some(("Q5_0", 32, 22)),
    Some(("Q5_1", 32, 24)),
    Some(("Q8_0", 32, 34)),
    Some(("Q8_1", 32, 40)),
    Some(("Q2_K", 256, 84)),
    Some(("Q3_K", 256, 110)),
    Some(("Q4_K", 256, 144)),
    Some(("Q5_K", 256, 176)),
    Some(("Q6_K", 256, 210)),
    Some(("Q8_K", 256, 292)),
    Some(("IQ2_XXS", 256, 66)),
    Some(("IQ2_XS", 256, 74)),
    Some(("IQ3_XXS", 256, 98)),
    Some(("IQ1_S", 256, 50)),
    Some(("IQ4_NL", 32, 18)),
    Some(("IQ3_S", 256, 110)),
    Some(("IQ2_S", 256, 82)),
    Some(("IQ4_XS", 256, 136)),
    Some(("I8", 1, 1)),
    Some(("I16", 1, 2)),
    Some(("I32", 1, 4)),
    Some(("I64", 1, 8)),
    Some(("F64", 1, 8)),
    Some(("IQ1_M", 256, 56)),
    Some(("BF16", 1, 2)),
    None,
    None,
    None,
    Some(("TQ1_0", 256, 54)),
    Some(("TQ2_0", 256, 66)),
    None,
    None,
    None,
    Some(("MXFP4", 32, 17)),
    Some(("NVFP4", 64, 36)),
    Some(("Q1_0", 128, 18)),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);

    fn entry(self) -> Option<(&'static str, u64, u64)> {
        TYPE_TABLE.get(self.0 as usize).copied().flatten()
    }

    /// Returns whether ggml defines this type id.
    pub fn is_known(self) -> bool {
        self.entry().is_some()
    }

    /// Returns whether MER's kernels compute with this type.
    pub fn is_supported(self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::Q4_0 | Self::Q4_1 | Self::Q8_0)
    }

    /// Elements per block (1 for plain float types). Unknown types report 0.
    pub fn block_elems(self) -> u64 {
        self.entry().map_or(0, |e| e.1)
    }

    /// Bytes per block. Unknown types report 0.
    pub fn block_bytes(self) -> u64 {
        self.entry().map_or(0, |e| e.2)
    }

    /// Bytes of a row of `n` elements, or `None` when `n` is not a whole number of blocks or
    /// the type is unknown.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let (_, elems, bytes) = self.entry()?;
        if n % elems != 0 {
            return None;
        }
        (n / elems).checked_mul(bytes)
    }

    /// Returns the ggml name of the type, such as `Q4_0`.
    pub fn name(self) -> String {
        match self.entry() {
            Some((name, _, _)) => name.to_string(),
            None => format!("unknown type {}", self.0),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}
