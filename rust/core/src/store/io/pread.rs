//! The pread backend: a pool of threads, each reading one chunk at a time with `pread`.
//!
//! With a file opened with O_DIRECT it bypasses the page cache (`pread`); with a plain file it
//! reads through it (`buffered`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::{IoOptions, PendingReads, ReadBackend, ReadChunk, ReadFailure, ReadJob};

/// The queue the workers share, and whether the backend is shutting down.
#[derive(Default)]
struct Queue {
    pending: Mutex<(PendingReads, bool)>,
    added: Condvar,
}

/// A thread pool of `queue_depth` readers sharing one queue of chunks.
pub struct PreadBackend {
    name: &'static str,
    queue: Arc<Queue>,
    workers: Vec<JoinHandle<()>>,
}

impl PreadBackend {
    pub fn new(file: File, options: IoOptions, name: &'static str) -> io::Result<Self> {
        let queue = Arc::new(Queue::default());
        let file = Arc::new(file);
        let mut workers = Vec::with_capacity(options.queue_depth);
        for i in 0..options.queue_depth.max(1) {
            let (worker_queue, file) = (Arc::clone(&queue), Arc::clone(&file));
            let spawned =
                std::thread::Builder::new().name(format!("mer-{name}-{i}")).spawn(move || worker(&file, &worker_queue));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    // Stop the workers already started before reporting the failure.
                    drop(PreadBackend { name, queue, workers });
                    return Err(e);
                }
            }
        }
        Ok(PreadBackend { name, queue, workers })
    }
}

/// Reads chunks until the backend shuts down and the queue is empty.
fn worker(file: &File, queue: &Queue) {
    loop {
        let mut pending = queue.pending.lock().unwrap();
        let next = loop {
            if let Some(work) = pending.0.pop() {
                break Some(work);
            }
            if pending.1 {
                break None;
            }
            pending = queue.added.wait(pending).unwrap();
        };
        drop(pending);
        let Some((chunk, job)) = next else { return };
        job.chunk_done(read_chunk(file, &chunk));
    }
}

/// Reads one chunk, retrying short reads, and fails if the file ends before `required` bytes.
pub fn read_chunk(file: &File, chunk: &ReadChunk) -> Result<usize, ReadFailure> {
    // SAFETY: the store reserved `len` bytes at `dst` for this read and nothing else accesses
    // them until the job completes (see `ReadChunk`).
    let buf = unsafe { std::slice::from_raw_parts_mut(chunk.dst, chunk.len) };
    let mut done = 0;
    while done < chunk.required {
        match file.read_at(&mut buf[done..], chunk.offset + done as u64) {
            Ok(0) => {
                return Err(ReadFailure::new(
                    chunk.offset + done as u64,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended before the expert's data"),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadFailure::new(chunk.offset + done as u64, e)),
        }
    }
    Ok(done)
}

impl ReadBackend for PreadBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    fn submit(&self, chunks: Vec<ReadChunk>, job: Arc<ReadJob>) {
        let mut pending = self.queue.pending.lock().unwrap();
        for chunk in chunks {
            pending.0.push(chunk, Arc::clone(&job));
        }
        drop(pending);
        self.queue.added.notify_all();
    }
}

impl Drop for PreadBackend {
    fn drop(&mut self) {
        // Each worker ends once the queue is empty.
        self.queue.pending.lock().unwrap().1 = true;
        self.queue.added.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
