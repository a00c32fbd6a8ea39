//! Read bandwidth of the disk under a model file, measured through the I/O backends of the
//! expert store: the same chunking, queue depth and O_DIRECT reads as expert reads.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver};
use std::time::Instant;

use crate::aligned::AlignedBuf;
use crate::error::{Error, Result};
use crate::store::io::{open_backend, BackendChoice, IoOptions, ReadChunk, ReadFailure, ReadJob, DIRECT_ALIGN};

/// Bytes of each contiguous range that [`disk_read_bandwidth`] reads: 32 MiB, about the size of
/// one of the three ranges of a Mixtral 8x7B expert at q4_0 (33 MB).
pub const DISK_RANGE_BYTES: usize = 32 << 20;

/// Default bytes that [`disk_read_bandwidth`] reads from a file larger than that: 2 GiB.
pub const DEFAULT_DISK_BYTES: u64 = 2 << 30;

/// Largest chunk size accepted, as for the expert store.
const MAX_CHUNK_BYTES: usize = 64 << 20;

/// Largest queue depth accepted, as for the expert store.
const MAX_QUEUE_DEPTH: usize = 256;

/// Ranges in flight at once. While one range finishes, the next one's chunks wait in the
/// backend's queue, so the queue never drains between ranges.
const RANGES_IN_FLIGHT: usize = 2;

/// The outcome of [`disk_read_bandwidth`].
#[derive(Clone, Debug)]
pub struct DiskReadBandwidth {
    /// Bytes the reads returned.
    pub bytes_read: u64,
    /// Time from the first request to the last completion, in seconds.
    pub seconds: f64,
    /// Backend that read: `io_uring`, `pread` or `buffered`.
    pub backend: &'static str,
    /// Reason for the choice of backend, as the expert store reports it.
    pub backend_reason: String,
}

impl DiskReadBandwidth {
    /// Bytes read per second.
    pub fn bytes_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes_read as f64 / self.seconds
        } else {
            f64::INFINITY
        }
    }
}

/// Measures how fast the file at `path` reads, in bytes/s, through the backend that `choice`
/// opens with the chunk size and queue depth of `io`, as the expert store reads experts.
///
/// Reads `bytes` bytes, rounded up to whole ranges of 32 MiB, or all of a smaller file. The
/// ranges are contiguous and spread evenly from the start to the end of the file. Two ranges
/// are in flight at a time, each into its half of an aligned buffer. With O_DIRECT (the io_uring and pread backends) the page cache is bypassed, so the
/// figure is the disk's. The buffered backend reads through the page cache, so a cached file
/// measures memory copies instead.
///
/// Returns `Error::InvalidArgument` for zero `bytes`, an empty file, a chunk size that is not
/// a multiple of 4096 up to 64 MiB, or a queue depth outside 1 to 256, and `Error::Io` when
/// the file cannot be opened or a read fails.
pub fn disk_read_bandwidth(path: &Path, bytes: u64, io: IoOptions, choice: BackendChoice) -> Result<DiskReadBandwidth> {
    check_options(bytes, io)?;
    let file_size = std::fs::metadata(path).map_err(|e| Error::io(path, "failed to read the file size", e))?.len();
    if file_size == 0 {
        return Err(Error::InvalidArgument(format!("{}: the file is empty, so its read bandwidth cannot be measured", path.display())));
    }

    // Whole chunks per range, so every chunk but the last of a range has the full size.
    let range_bytes = DISK_RANGE_BYTES.div_ceil(io.chunk_bytes) * io.chunk_bytes;
    let ranges = plan_ranges(file_size, bytes, range_bytes);
    let opened = open_backend(path, choice, io).map_err(|e| Error::io(path, "failed to open the file to measure its read bandwidth", e))?;
    let backend = opened.backend;
    let mut buffer = AlignedBuf::new(RANGES_IN_FLIGHT * range_bytes, DIRECT_ALIGN)
        .ok_or_else(|| Error::InvalidArgument(format!("failed to allocate {} bytes for the read buffer", RANGES_IN_FLIGHT * range_bytes)))?;
    let parts: Vec<&[u8]> = buffer.chunks_exact(range_bytes).collect();
    backend.register_buffers(&parts);

    let mut in_flight: VecDeque<Receiver<std::result::Result<u64, ReadFailure>>> = VecDeque::new();
    let mut outcome = Outcome::default();
    let started = Instant::now();
    for (i, &(offset, required)) in ranges.iter().enumerate() {
        if in_flight.len() == RANGES_IN_FLIGHT {
            outcome.wait(in_flight.pop_front());
        }
        if outcome.failure.is_some() {
            break;
        }
        // The part of the buffer for range i was last used by range i - 2, which completed above.
        let part = (i % RANGES_IN_FLIGHT) * range_bytes;
        let chunks = range_chunks(offset, required, &mut buffer[part..part + range_bytes], io.chunk_bytes);
        let (sender, receiver) = channel();
        let job = ReadJob::new(chunks.len(), true, Box::new(move |result| drop(sender.send(result))));
        backend.submit(chunks, job);
        in_flight.push_back(receiver);
    }
    // Wait for every read, even after a failure, because they write into `buffer`.
    while let Some(receiver) = in_flight.pop_front() {
        outcome.wait(Some(receiver));
    }
    let seconds = started.elapsed().as_secs_f64();
    let name = backend.name();
    drop(backend);
    drop(buffer);

    if let Some(failure) = outcome.failure {
        let context = format!("failed to measure the read bandwidth: read at offset {} failed", failure.offset);
        return Err(Error::io(path, context, failure.error));
    }
    Ok(DiskReadBandwidth { bytes_read: outcome.bytes_read, seconds, backend: name, backend_reason: opened.reason })
}

fn check_options(bytes: u64, io: IoOptions) -> Result<()> {
    if bytes == 0 {
        return Err(Error::InvalidArgument("bytes to read must be at least 1".into()));
    }
    if io.chunk_bytes == 0 || io.chunk_bytes % DIRECT_ALIGN != 0 || io.chunk_bytes > MAX_CHUNK_BYTES {
        return Err(Error::InvalidArgument(format!("chunk_bytes must be a multiple of 4096 up to 64 MiB, not {}", io.chunk_bytes)));
    }
    if !(1..=MAX_QUEUE_DEPTH).contains(&io.queue_depth) {
        return Err(Error::InvalidArgument(format!("queue_depth must be between 1 and 256, not {}", io.queue_depth)));
    }
    Ok(())
}

/// Bytes read and the first failure of the ranges waited for so far.
#[derive(Default)]
struct Outcome {
    bytes_read: u64,
    failure: Option<ReadFailure>,
}

impl Outcome {
    fn wait(&mut self, receiver: Option<Receiver<std::result::Result<u64, ReadFailure>>>) {
        let Some(receiver) = receiver else { return };
        let result = receiver.recv().unwrap_or_else(|_| Err(ReadFailure::new(0, io::Error::other("the I/O backend dropped a read"))));
        match result {
            Ok(bytes) => self.bytes_read += bytes,
            Err(failure) => {
                self.failure.get_or_insert(failure);
            }
        }
    }
}

/// Returns (offset, length) of the ranges to read: `bytes` bytes (at most the file) in ranges
/// of `range_bytes`, a multiple of 4096. The ranges start on 4096-byte boundaries, spaced
/// evenly over the file, and are back to back when they cover the whole file.
fn plan_ranges(file_size: u64, bytes: u64, range_bytes: usize) -> Vec<(u64, usize)> {
    let range = range_bytes as u64;
    let count = bytes.min(file_size).div_ceil(range).max(1);
    let stride = if count * range >= file_size {
        range
    } else {
        file_size / count / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64
    };
    (0..count)
        .map(|i| i * stride)
        .take_while(|&offset| offset < file_size)
        .map(|offset| (offset, range.min(file_size - offset) as usize))
        .collect()
}

/// Splits the read of `required` bytes at file `offset` into chunks of at most `chunk_bytes`,
/// which land in `dst` in order. The last chunk is rounded up to 4096 bytes for O_DIRECT, which `dst` has
/// room for, and its padding may lie past the end of the file.
fn range_chunks(offset: u64, required: usize, dst: &mut [u8], chunk_bytes: usize) -> Vec<ReadChunk> {
    let padded = required.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    assert!(padded <= dst.len(), "a range of {padded} bytes does not fit a buffer of {}", dst.len());
    (0..padded)
        .step_by(chunk_bytes)
        .map(|start| {
            let len = chunk_bytes.min(padded - start);
            ReadChunk {
                offset: offset + start as u64,
                len,
                required: len.min(required - start),
                dst: dst[start..].as_mut_ptr(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: usize = 1 << 20;

    #[test]
    fn plan_reads_small_file_whole() {
        assert_eq!(plan_ranges(10 * MIB as u64, 2 << 30, 4 * MIB), vec![(0, 4 * MIB), (4 * MIB as u64, 4 * MIB), (8 * MIB as u64, 2 * MIB)]);
        assert_eq!(plan_ranges(100, 1 << 30, 4 * MIB), vec![(0, 100)]);
    }

    #[test]
    fn plan_spreads_ranges_over_large_file() {
        let file_size = 100 * MIB as u64 + 5;
        let ranges = plan_ranges(file_size, 8 * MIB as u64, 4 * MIB);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0], (0, 4 * MIB));
        // The second range starts halfway, rounded down to 4096 bytes.
        assert_eq!(ranges[1], (file_size / 2 / 4096 * 4096, 4 * MIB));
        for &(offset, len) in &ranges {
            assert_eq!(offset % 4096, 0);
            assert!(offset + len as u64 <= file_size);
        }
    }

    #[test]
    fn plan_reads_requested_bytes() {
        let ranges = plan_ranges(1 << 30, 100 * MIB as u64, 32 * MIB);
        assert_eq!(ranges.len(), 4);
        assert_eq!(ranges.iter().map(|&(_, len)| len).sum::<usize>(), 128 * MIB);
        assert_eq!(ranges[3].0, 3 * (256 * MIB) as u64);
    }

    #[test]
    fn chunks_pad_last_read_to_alignment() {
        let mut buffer = vec![0u8; 3 * 4096];
        let chunks = range_chunks(8192, 2 * 4096 + 10, &mut buffer, 4096);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.iter().map(|c| c.offset).collect::<Vec<_>>(), vec![8192, 12288, 16384]);
        assert_eq!(chunks.iter().map(|c| c.len).collect::<Vec<_>>(), vec![4096, 4096, 4096]);
        assert_eq!(chunks.iter().map(|c| c.required).collect::<Vec<_>>(), vec![4096, 4096, 10]);
        assert_eq!(chunks[2].dst as usize - chunks[0].dst as usize, 8192);
    }

    fn write_file(name: &str, len: usize) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("mer-disk-{name}-{}.bin", std::process::id()));
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        std::fs::File::create(&path).unwrap().write_all(&data).unwrap();
        path
    }

    #[test]
    fn measures_every_byte_of_small_file() {
        let len = 3 * MIB + 123;
        let path = write_file("small", len);
        let io = IoOptions { chunk_bytes: MIB, queue_depth: 4 };
        for choice in [BackendChoice::Buffered, BackendChoice::Auto] {
            let measured = disk_read_bandwidth(&path, 1 << 30, io, choice).unwrap();
            assert!(measured.bytes_read >= len as u64, "{choice:?}: {} bytes", measured.bytes_read);
            assert!(measured.bytes_read < (len + 4096) as u64, "{choice:?}: {} bytes", measured.bytes_read);
            assert!(measured.bytes_per_s() > 0.0);
        }
        let buffered = disk_read_bandwidth(&path, 1 << 30, io, BackendChoice::Buffered).unwrap();
        assert_eq!(buffered.backend, "buffered");
        assert_eq!(buffered.bytes_read, len as u64);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn rejects_bad_arguments() {
        let path = write_file("arguments", 8192);
        let invalid = |r: Result<DiskReadBandwidth>| matches!(r, Err(Error::InvalidArgument(_)));
        let io = IoOptions::default();
        assert!(invalid(disk_read_bandwidth(&path, 0, io, BackendChoice::Buffered)));
        assert!(invalid(disk_read_bandwidth(&path, 1, IoOptions { chunk_bytes: 1000, ..io }, BackendChoice::Buffered)));
        assert!(invalid(disk_read_bandwidth(&path, 1, IoOptions { queue_depth: 0, ..io }, BackendChoice::Buffered)));
        std::fs::remove_file(&path).unwrap();

        let empty = write_file("empty", 0);
        assert!(invalid(disk_read_bandwidth(&empty, 1, io, BackendChoice::Buffered)));
        std::fs::remove_file(&empty).unwrap();

        let missing = disk_read_bandwidth(Path::new("/nonexistent/model.gguf"), 1, io, BackendChoice::Buffered);
        assert!(matches!(missing, Err(Error::Io { .. })));
    }
}
