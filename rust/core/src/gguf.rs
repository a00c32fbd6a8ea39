//! Reading GGUF headers, metadata and the tensor index (versions 2 and 3, little-endian).
//!
//! Every count, length, dimension and offset is checked against the file size before it is
//! used, so a truncated or malformed file gives an error naming the key or tensor and the byte
//! offset, never a huge allocation. Tensor data is not read here: the model reads resident
//! weights and the expert store reads experts, both at the offsets this index reports.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal GGUF, but no real file nests deeper than this.
const MAX_ARRAY_DEPTH: u32 = 8;
/// Upper bounds on declared counts. A value in memory takes up to 32 times the bytes of its
/// smallest encoding, so a count that merely fits in the file could still exhaust RAM. Real
/// files stay far below these: the largest vocabularies have about 2^18 tokens, and a model with
/// 256 legacy per-expert tensors in each of 64 layers has about 2^16 tensors.
const MAX_ARRAY_LEN: u64 = 1 << 24;
const MAX_METADATA_KEYS: u64 = 1 << 16;
const MAX_TENSORS: u64 = 1 << 20;
/// Vectors for declared counts start no larger than this and grow as entries are read.
const INITIAL_CAPACITY: u64 = 4096;

/// One metadata value, typed as the file declares it.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// Returns the value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Returns the value as a float, when it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// Returns the value as a string slice, when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Returns the GGUF name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "uint8",
            MetaValue::I8(_) => "int8",
            MetaValue::U16(_) => "uint16",
            MetaValue::I16(_) => "int16",
            MetaValue::U32(_) => "uint32",
            MetaValue::I32(_) => "int32",
            MetaValue::F32(_) => "float32",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
            MetaValue::U64(_) => "uint64",
            MetaValue::I64(_) => "int64",
            MetaValue::F64(_) => "float64",
        }
    }
}

/// One entry of the tensor index.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Tensor name, such as `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as ggml's `ne`.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub n_bytes: u64,
    /// Byte offset of this entry in the tensor index, for error messages.
    pub index_offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header: metadata and tensor index, with the file's path and size.
#[derive(Debug)]
pub struct GgufFile {
    /// Path the file was opened from.
    pub path: PathBuf,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// File size in bytes when it was opened.
    pub file_size: u64,
    /// Alignment of tensor data (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute byte offset where tensor data starts.
    pub data_offset: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Byte offset of each metadata entry, parallel to `metadata`.
    pub metadata_offsets: Vec<u64>,
    /// Tensor index in file order.
    pub tensors: Vec<TensorInfo>,
    metadata_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Opens `path` and parses its header and tensor index.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, "failed to open the model file", e))?;
        let file_size = file
            .metadata()
            .map_err(|e| Error::io(path, "failed to read the file size", e))?
            .len();
        let mut reader = HeaderReader { inner: BufReader::with_capacity(1 << 20, file), pos: 0, file_size, path };
        parse(&mut reader)
    }

    /// Looks up a metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Looks up a tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// Builds an error about metadata key `key`, at the key's offset when the file has the key.
    pub fn key_error(&self, key: &str, message: impl Into<String>) -> Error {
        let offset = self.metadata_index.get(key).map(|&i| self.metadata_offsets[i]);
        Error::format(&self.path, offset, message)
    }

    /// Reads a required unsigned integer key.
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        let value = self.get(key).ok_or_else(|| Error::format(&self.path, None, format!("missing metadata key {key}")))?;
        value
            .as_u64()
            .ok_or_else(|| self.key_error(key, format!("metadata key {key} is {}, expected an unsigned integer", value.type_name())))
    }

    /// Reads an optional unsigned integer key.
    pub fn optional_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.require_u64(key).map(Some),
        }
    }

    /// Reads an optional float key.
    pub fn optional_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.key_error(key, format!("metadata key {key} is {}, expected a number", value.type_name()))),
        }
    }

    /// Reads an optional string key.
    pub fn optional_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value
                .as_str()
                .map(Some)
                .ok_or_else(|| self.key_error(key, format!("metadata key {key} is {}, expected a string", value.type_name()))),
        }
    }
}

/// A buffered reader that tracks its byte offset and checks reads against the file size.
struct HeaderReader<'p> {
    inner: BufReader<File>,
    pos: u64,
    file_size: u64,
    path: &'p Path,
}

impl HeaderReader<'_> {
    fn remaining(&self) -> u64 {
        self.file_size.saturating_sub(self.pos)
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::format(self.path, self.pos, message)
    }

    fn read_bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        if (N as u64) > self.remaining() {
            return Err(self.error(format!("file is truncated: it ends while reading {what}")));
        }
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| Error::io(self.path, format!("failed to read {what} at offset {}", self.pos), e))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.read_bytes::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.read_bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.read_bytes(what)?))
    }

    /// Reads a length-prefixed string. The length is checked against the bytes left in the file
    /// before anything is allocated.
    fn string(&mut self, what: &str) -> Result<String> {
        let start = self.pos;
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(Error::format(
                self.path,
                start,
                format!("{what} has length {len}, more than the {} bytes left in the file", self.remaining()),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| Error::io(self.path, format!("failed to read {what} at offset {}", self.pos), e))?;
        self.pos += len;
        match String::from_utf8(buf) {
            Ok(s) => Ok(s),
            Err(e) => {
                log::warn!("{}: {what} at offset {start} is not valid UTF-8; invalid bytes were replaced", self.path.display());
                Ok(String::from_utf8_lossy(e.as_bytes()).into_owned())
            }
        }
    }

    fn value(&mut self, type_id: u32, what: &str, depth: u32) -> Result<MetaValue> {
        Ok(match type_id {
            0 => MetaValue::U8(self.u8(what)?),
            1 => MetaValue::I8(self.u8(what)? as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.read_bytes(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.read_bytes(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.read_bytes(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.read_bytes(what)?)),
            7 => {
                let offset = self.pos;
                match self.u8(what)? {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    b => return Err(Error::format(self.path, offset, format!("{what} is a bool with invalid byte {b}"))),
                }
            }
            8 => MetaValue::String(self.string(what)?),
            9 => self.array(what, depth)?,
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.read_bytes(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.read_bytes(what)?)),
            other => return Err(self.error(format!("{what} has invalid value type {other}"))),
        })
    }

    fn array(&mut self, what: &str, depth: u32) -> Result<MetaValue> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.error(format!("{what} nests arrays more than {MAX_ARRAY_DEPTH} deep")));
        }
        let start = self.pos;
        let elem_type = self.u32(what)?;
        let count = self.u64(what)?;
        let min_elem_bytes = min_value_bytes(elem_type)
            .ok_or_else(|| Error::format(self.path, start, format!("{what} has invalid element type {elem_type}")))?;
        if count > MAX_ARRAY_LEN {
            return Err(Error::format(self.path, start, format!("{what} declares {count} elements, more than the limit of {MAX_ARRAY_LEN}")));
        }
        if count.saturating_mul(min_elem_bytes) > self.remaining() {
            return Err(Error::format(
                self.path,
                start,
                format!("{what} declares {count} elements, more than the {} bytes left in the file can hold", self.remaining()),
            ));
        }
        let mut items = Vec::with_capacity(count.min(INITIAL_CAPACITY) as usize);
        for _ in 0..count {
            items.push(self.value(elem_type, what, depth + 1)?);
        }
        Ok(MetaValue::Array(items))
    }
}

/// Returns the bytes of the smallest encoding of a value of this type, to bound array counts.
fn min_value_bytes(type_id: u32) -> Option<u64> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8,
        9 => 12,
        _ => return None,
    })
}

fn parse(r: &mut HeaderReader<'_>) -> Result<GgufFile> {
    let magic = r.read_bytes::<4>("the magic bytes")?;
    if &magic != MAGIC {
        return Err(Error::format(r.path, 0u64, format!("not a GGUF file: magic bytes are {magic:02x?}, expected \"GGUF\"")));
    }
    let version = r.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => return Err(Error::unsupported(r.path, "GGUF version 1 is not supported; convert the model again with a current llama.cpp")),
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(Error::unsupported(r.path, "big-endian GGUF files are not supported"))
        }
        v => return Err(Error::format(r.path, 4, format!("unknown GGUF version {v}; versions 2 and 3 are supported"))),
    }

    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    // A metadata entry takes at least 13 bytes (key length, type, one byte of value) and a tensor
    // entry at least 24 (name length, dimension count, type, offset).
    if kv_count > MAX_METADATA_KEYS {
        return Err(Error::format(r.path, 16, format!("metadata count {kv_count} is more than the limit of {MAX_METADATA_KEYS}")));
    }
    if tensor_count > MAX_TENSORS {
        return Err(Error::format(r.path, 8, format!("tensor count {tensor_count} is more than the limit of {MAX_TENSORS}")));
    }
    if kv_count.saturating_mul(13) > r.remaining() {
        return Err(Error::format(r.path, 16, format!("metadata count {kv_count} cannot fit in a file of {} bytes", r.file_size)));
    }
    if tensor_count.saturating_mul(24) > r.remaining() {
        return Err(Error::format(r.path, 8, format!("tensor count {tensor_count} cannot fit in a file of {} bytes", r.file_size)));
    }

    let mut metadata = Vec::with_capacity(kv_count.min(INITIAL_CAPACITY) as usize);
    let mut metadata_offsets = Vec::with_capacity(metadata.capacity());
    let mut metadata_index = HashMap::with_capacity(metadata.capacity());
    for i in 0..kv_count {
        let entry_offset = r.pos;
        let key = r.string(&format!("the key of metadata entry {i}"))?;
        let type_id = r.u32(&format!("the type of metadata key {key}"))?;
        let value = r.value(type_id, &format!("metadata key {key}"), 0)?;
        if metadata_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(Error::format(r.path, entry_offset, format!("metadata key {key} appears twice")));
        }
        metadata.push((key, value));
        metadata_offsets.push(entry_offset);
    }

    let alignment = match metadata_index.get("general.alignment").map(|&i| (&metadata[i].1, metadata_offsets[i])) {
        None => DEFAULT_ALIGNMENT,
        Some((MetaValue::U32(a), _)) if a.is_power_of_two() => u64::from(*a),
        Some((MetaValue::U32(a), offset)) => {
            return Err(Error::format(r.path, offset, format!("general.alignment is {a}, expected a power of two")))
        }
        Some((other, offset)) => {
            return Err(Error::format(r.path, offset, format!("general.alignment is {}, expected uint32", other.type_name())))
        }
    };

    let mut tensors = Vec::with_capacity(tensor_count.min(INITIAL_CAPACITY) as usize);
    let mut tensor_index = HashMap::with_capacity(tensors.capacity());
    for i in 0..tensor_count {
        let index_offset = r.pos;
        let name = r.string(&format!("the name of tensor {i}"))?;
        let n_dims = r.u32(&format!("the dimension count of tensor {name}"))?;
        if n_dims > MAX_DIMS {
            return Err(Error::format(r.path, index_offset, format!("tensor {name} has {n_dims} dimensions, at most {MAX_DIMS} are allowed")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&format!("the dimensions of tensor {name}"))?);
        }
        let ggml_type = GgmlType(r.u32(&format!("the type of tensor {name}"))?);
        let relative_offset = r.u64(&format!("the offset of tensor {name}"))?;

        let info = check_tensor(r, name, dims, ggml_type, relative_offset, alignment, index_offset)?;
        if tensor_index.insert(info.name.clone(), tensors.len()).is_some() {
            return Err(Error::format(r.path, index_offset, format!("tensor {} appears twice", info.name)));
        }
        tensors.push(info);
    }

    let data_offset = r.pos.div_ceil(alignment) * alignment;
    for t in &mut tensors {
        t.offset = data_offset.saturating_add(t.offset);
        let end = t.offset.checked_add(t.n_bytes);
        if end.map_or(true, |end| end > r.file_size) {
            return Err(Error::format(
                r.path,
                t.index_offset,
                format!(
                    "tensor {} spans bytes {}..{} but the file has only {} bytes (truncated file?)",
                    t.name,
                    t.offset,
                    t.offset.saturating_add(t.n_bytes),
                    r.file_size
                ),
            ));
        }
    }

    Ok(GgufFile {
        path: r.path.to_path_buf(),
        version,
        file_size: r.file_size,
        alignment,
        data_offset,
        metadata,
        metadata_offsets,
        tensors,
        metadata_index,
        tensor_index,
    })
}

/// Validates one tensor index entry. The returned offset is still relative to the data section.
fn check_tensor(
    r: &HeaderReader<'_>,
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    relative_offset: u64,
    alignment: u64,
    index_offset: u64,
) -> Result<TensorInfo> {
    let fail = |message: String| Error::format(r.path, index_offset, message);
    if !ggml_type.is_known() {
        return Err(fail(format!("tensor {name} has unknown type id {}", ggml_type.0)));
    }
    if dims.contains(&0) {
        return Err(fail(format!("tensor {name} has a zero dimension: {dims:?}")));
    }
    let Some(n_elements) = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) else {
        return Err(fail(format!("tensor {name} has dimensions {dims:?}, whose product overflows")));
    };
    let row = dims.first().copied().unwrap_or(1);
    if row % ggml_type.block_elems() != 0 {
        return Err(fail(format!(
            "tensor {name} of type {ggml_type} has rows of {row} elements, not a multiple of the block size {}",
            ggml_type.block_elems()
        )));
    }
    let Some(row_bytes) = ggml_type.row_bytes(row) else {
        return Err(fail(format!("tensor {name} has dimensions {dims:?}, whose size in bytes overflows")));
    };
    let n_bytes = row_bytes.checked_mul(n_elements / row).ok_or_else(|| fail(format!("tensor {name} is too large")))?;
    if relative_offset % alignment != 0 {
        return Err(fail(format!("tensor {name} has offset {relative_offset}, not a multiple of the alignment {alignment}")));
    }
    Ok(TensorInfo { name, dims, ggml_type, offset: relative_offset, n_bytes, index_offset })
}
