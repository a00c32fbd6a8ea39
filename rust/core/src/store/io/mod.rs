//! I/O backends that read expert ranges from the model file into slots.
//!
//! A read is split into chunks. Every chunk reports to the [`ReadJob`] it belongs to, and the
//! job calls its completion callback once, after the last chunk. Three backends exist:
//! io_uring on a reactor thread (the default), a pread thread pool with O_DIRECT, and the same
//! pool with buffered reads for file systems without O_DIRECT (tmpfs).

pub mod pread;
pub mod uring;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::aligned::AlignedBuf;

/// Alignment of offsets, lengths and buffers for O_DIRECT reads. 4096 is the logical block size
/// of every common device and file system, so it is safe everywhere O_DIRECT works.
pub const DIRECT_ALIGN: usize = 4096;

/// The backend the user requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// io_uring, falling back to pread and then buffered reads when refused.
    Auto,
    IoUring,
    Pread,
    Buffered,
}

impl BackendChoice {
    /// Parses `auto`, `io_uring`, `pread` or `buffered`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(Self::Auto),
            "io_uring" => Some(Self::IoUring),
            "pread" => Some(Self::Pread),
            "buffered" => Some(Self::Buffered),
            _ => None,
        }
    }
}

/// Tuning of the backends.
#[derive(Clone, Copy, Debug)]
pub struct IoOptions {
    /// Bytes per read request; a multiple of 4096.
    pub chunk_bytes: usize,
    /// Read requests kept in flight.
    pub queue_depth: usize,
}

impl Default for IoOptions {
    fn default() -> Self {
        // 4 MiB reads at queue depth 8 through io_uring reached about 3.5 times the bandwidth of
        // one pread at a time on the development machines.
        IoOptions { chunk_bytes: 4 << 20, queue_depth: 8 }
    }
}

/// One read request: `len` bytes at file `offset` into `dst`. Only the first `required` bytes
/// must arrive; the rest pads the request to the O_DIRECT alignment and may lie past the end of
/// the file.
#[derive(Clone, Copy, Debug)]
pub struct ReadChunk {
    pub offset: u64,
    pub len: usize,
    pub required: usize,
    pub dst: *mut u8,
}

// SAFETY: `dst` points into a slot that the expert store keeps allocated and pinned in the
// Loading state until the job completes. No other code touches that memory meanwhile, so the
// pointer may move to the I/O thread that performs the read.
unsafe impl Send for ReadChunk {}

/// Why a read failed: the file offset of the chunk and the error, or a cancelled prefetch.
#[derive(Debug)]
pub struct ReadFailure {
    pub offset: u64,
    pub error: io::Error,
    /// The job was cancelled before this chunk was read.
    pub cancelled: bool,
}

impl ReadFailure {
    /// A failed read of the chunk at `offset`.
    pub fn new(offset: u64, error: io::Error) -> Self {
        ReadFailure { offset, error, cancelled: false }
    }
}

impl fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "read at offset {} failed: {}", self.offset, self.error)
    }
}

type Completion = Box<dyn FnOnce(Result<u64, ReadFailure>) + Send>;

/// The chunks of one expert read, and the callback to run when the last one finishes.
///
/// Demand reads are urgent: backends read their chunks before those of prefetches. A prefetch
/// becomes urgent when a demand request starts waiting for it, and can be cancelled while no
/// request waits: its chunks not yet started are then dropped.
pub struct ReadJob {
    urgent: AtomicBool,
    cancelled: AtomicBool,
    remaining: AtomicUsize,
    bytes: AtomicU64,
    failure: Mutex<Option<ReadFailure>>,
    completion: Mutex<Option<Completion>>,
}

impl ReadJob {
    /// Creates a job of `chunks` chunks that calls `completion` with the bytes read or the first
    /// failure.
    pub fn new(chunks: usize, urgent: bool, completion: Completion) -> Arc<Self> {
        Arc::new(ReadJob {
            urgent: AtomicBool::new(urgent),
            cancelled: AtomicBool::new(false),
            remaining: AtomicUsize::new(chunks),
            bytes: AtomicU64::new(0),
            failure: Mutex::new(None),
            completion: Mutex::new(Some(completion)),
        })
    }

    /// Returns whether the job's chunks go before those of prefetches.
    pub fn is_urgent(&self) -> bool {
        self.urgent.load(Ordering::Relaxed)
    }

    /// Moves the job's chunks not yet started ahead of prefetches.
    pub fn make_urgent(&self) {
        self.urgent.store(true, Ordering::Relaxed);
    }

    /// Drops the job's chunks not yet started; the job completes as cancelled.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Returns whether the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Records the outcome of one chunk; the last chunk runs the completion.
    pub fn chunk_done(&self, result: Result<usize, ReadFailure>) {
        match result {
            Ok(n) => {
                self.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(failure) => {
                let mut slot = self.failure.lock().unwrap();
                if slot.is_none() {
                    *slot = Some(failure);
                }
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let outcome = match self.failure.lock().unwrap().take() {
                Some(failure) => Err(failure),
                None => Ok(self.bytes.load(Ordering::Relaxed)),
            };
            if let Some(completion) = self.completion.lock().unwrap().take() {
                completion(outcome);
            }
        }
    }
}

/// Chunks waiting for a backend to read them. Chunks of urgent jobs come first, then the rest
/// in the order submitted; chunks of cancelled jobs are completed as cancelled instead of read.
#[derive(Default)]
pub struct PendingReads {
    chunks: VecDeque<(ReadChunk, Arc<ReadJob>)>,
}

impl PendingReads {
    pub fn push(&mut self, chunk: ReadChunk, job: Arc<ReadJob>) {
        self.chunks.push_back((chunk, job));
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Takes the next chunk to read. The queue contains at most the chunks of a few experts, so a
    /// scan for the first urgent one is cheap.
    pub fn pop(&mut self) -> Option<(ReadChunk, Arc<ReadJob>)> {
        loop {
            let index = self.chunks.iter().position(|(_, job)| job.is_urgent()).unwrap_or(0);
            let (chunk, job) = self.chunks.remove(index)?;
            if !job.is_cancelled() || job.is_urgent() {
                return Some((chunk, job));
            }
            let error = io::Error::new(io::ErrorKind::Interrupted, "the prefetch was cancelled");
            job.chunk_done(Err(ReadFailure { offset: chunk.offset, error, cancelled: true }));
        }
    }

    /// Takes every chunk left, in order.
    pub fn drain(&mut self) -> impl Iterator<Item = (ReadChunk, Arc<ReadJob>)> + '_ {
        self.chunks.drain(..)
    }
}

/// A way of reading chunks of the model file.
pub trait ReadBackend: Send + Sync {
    /// Returns the backend's name as reported in stats: `io_uring`, `pread` or `buffered`.
    fn name(&self) -> &'static str;

    /// Starts reading `chunks`; each one reports to `job` when it finishes.
    fn submit(&self, chunks: Vec<ReadChunk>, job: Arc<ReadJob>);

    /// Registers the slot buffers with the kernel where the backend can use that. Failure is
    /// not an error: reads then go without registered buffers.
    fn register_buffers(&self, _buffers: &[&[u8]]) {}
}

/// The opened backend and, when it is not the one asked for, why.
pub struct OpenedBackend {
    pub backend: Box<dyn ReadBackend>,
    pub reason: String,
}

/// Opens the model file for reading through `choice`, falling back as `Auto` allows.
pub fn open_backend(path: &Path, choice: BackendChoice, options: IoOptions) -> io::Result<OpenedBackend> {
    let direct = || open_direct(path);
    match choice {
        BackendChoice::IoUring => {
            let file = direct()?;
            Ok(OpenedBackend { backend: Box::new(uring::UringBackend::new(file, options)?), reason: "requested".into() })
        }
        BackendChoice::Pread => Ok(OpenedBackend {
            backend: Box::new(pread::PreadBackend::new(direct()?, options, "pread")?),
            reason: "requested".into(),
        }),
        BackendChoice::Buffered => Ok(OpenedBackend {
            backend: Box::new(pread::PreadBackend::new(File::open(path)?, options, "buffered")?),
            reason: "requested".into(),
        }),
        BackendChoice::Auto => {
            let file = match direct() {
                Ok(file) => file,
                Err(e) => {
                    let reason = format!("O_DIRECT was rejected ({e}), so reads go through the page cache");
                    log::info!("{}: {reason}", path.display());
                    let backend = pread::PreadBackend::new(File::open(path)?, options, "buffered")?;
                    return Ok(OpenedBackend { backend: Box::new(backend), reason });
                }
            };
            match uring::UringBackend::new(file.try_clone()?, options) {
                Ok(backend) => Ok(OpenedBackend { backend: Box::new(backend), reason: "default".into() }),
                Err(e) if uring::is_refusal(&e) => {
                    let reason = format!("io_uring was refused ({e}); using the pread thread pool");
                    log::warn!("{}: {reason}", path.display());
                    Ok(OpenedBackend { backend: Box::new(pread::PreadBackend::new(file, options, "pread")?), reason })
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Opens `path` with O_DIRECT and checks with one aligned read that the file system honours it
/// (some accept the flag at open and reject the reads).
fn open_direct(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path)?;
    let mut probe = AlignedBuf::new(DIRECT_ALIGN, DIRECT_ALIGN).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
    file.read_at(&mut probe, 0)?;
    Ok(file)
}
