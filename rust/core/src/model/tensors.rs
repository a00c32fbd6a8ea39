//! Finding tensors by name, checking their shapes and types, and reading them into RAM.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::{dequantize, GgmlType, MatRef};

/// Alignment of resident tensor buffers: a cache line, and at least GGUF's default of 32.
const TENSOR_ALIGN: usize = 64;

/// A resident weight matrix: `rows` rows of `cols` elements, read from the file.
pub struct Tensor {
    pub name: String,
    pub ggml_type: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: AlignedBuf,
}

impl Tensor {
    /// Borrows the tensor as a matrix for the kernels.
    pub fn mat(&self) -> MatRef<'_> {
        MatRef::new(self.ggml_type, self.rows, self.cols, &self.data)
    }
}

/// Looks tensors up in the index, checks them and reads them, remembering which were used so
/// that a file with tensors MER would ignore is rejected instead of silently misread.
pub struct TensorLoader<'g> {
    pub gguf: &'g GgufFile,
    file: File,
    used: Mutex<HashSet<String>>,
}

impl<'g> TensorLoader<'g> {
    pub fn new(gguf: &'g GgufFile) -> Result<Self> {
        let file = File::open(&gguf.path).map_err(|e| Error::io(&gguf.path, "failed to open the model file", e))?;
        Ok(TensorLoader { gguf, file, used: Mutex::new(HashSet::new()) })
    }

    /// Returns whether the file has a tensor of this name.
    pub fn has(&self, name: &str) -> bool {
        self.gguf.tensor(name).is_some()
    }

    /// Finds a tensor and checks that its dimensions are `dims` and its type has a kernel.
    pub fn expect(&self, name: &str, dims: &[usize]) -> Result<&'g TensorInfo> {
        let gguf = self.gguf;
        let info = gguf.tensor(name).ok_or_else(|| Error::format(&gguf.path, None, format!("missing tensor {name}")))?;
        let expected: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if info.dims != expected {
            return Err(Error::format(
                &gguf.path,
                info.index_offset,
                format!("tensor {name} has shape {:?}, expected {expected:?}", info.dims),
            ));
        }
        if !info.ggml_type.is_supported() {
            return Err(Error::unsupported(
                &gguf.path,
                format!(
                    "tensor {name} has type {}, which MER cannot compute with; supported types: F32, F16, Q4_0, Q4_1, Q8_0",
                    info.ggml_type
                ),
            ));
        }
        self.used.lock().unwrap().insert(name.to_string());
        Ok(info)
    }

    /// Reads bytes `offset..offset + len` of the file into a new aligned buffer.
    pub fn read_range(&self, what: &str, offset: u64, len: usize) -> Result<AlignedBuf> {
        let path = &self.gguf.path;
        let mut buf = AlignedBuf::new(len, TENSOR_ALIGN)
            .ok_or_else(|| Error::io(path, format!("failed to allocate {len} bytes for {what}"), std::io::ErrorKind::OutOfMemory.into()))?;
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| Error::io(path, format!("failed to read {what} ({len} bytes at offset {offset})"), e))?;
        Ok(buf)
    }

    /// Reads a 2-D matrix of `rows` x `cols` (ggml dims `[cols, rows]`).
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor> {
        let info = self.expect(name, &[cols, rows])?;
        let data = self.read_range(&format!("tensor {name}"), info.offset, info.n_bytes as usize)?;
        Ok(Tensor { name: name.to_string(), ggml_type: info.ggml_type, rows, cols, data })
    }

    /// Reads a 1-D vector of `n` elements and converts it to f32.
    pub fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let info = self.expect(name, &[n])?;
        let data = self.read_range(&format!("tensor {name}"), info.offset, info.n_bytes as usize)?;
        let mut out = vec![0.0f32; n];
        dequantize(info.ggml_type, &data, &mut out);
        Ok(out)
    }

    /// Rejects the file if it has tensors that the forward pass would not use.
    pub fn reject_unused(&self) -> Result<()> {
        let used = self.used.lock().unwrap();
        if let Some(info) = self.gguf.tensors.iter().find(|t| !used.contains(&t.name)) {
            return Err(Error::unsupported(
                &self.gguf.path,
                format!("tensor {} is not part of the llama layout MER implements, so the model cannot run correctly", info.name),
            ));
        }
        Ok(())
    }
}
