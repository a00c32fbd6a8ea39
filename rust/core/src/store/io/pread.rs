//! The pread backend: a pool of threads, each reading one chunk at a time with `pread`.
//!
//! With a file opened with O_DIRECT it bypasses the page cache (`pread`); with a plain file it
//! reads through it (`buffered`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{IoOptions, ReadBackend, ReadChunk, ReadFailure, ReadJob};

type Work = (ReadChunk, Arc<ReadJob>);

/// A thread pool of `queue_depth` readers sharing one queue of chunks.
pub struct PreadBackend {
    name: &'static str,
    sender: Mutex<Option<Sender<Work>>>,
    workers: Vec<JoinHandle<()>>,
}

impl PreadBackend {
    pub fn new(file: File, options: IoOptions, name: &'static str) -> io::Result<Self> {
        let (sender, receiver) = channel::<Work>();
        let receiver = Arc::new(Mutex::new(receiver));
        let file = Arc::new(file);
        let mut workers = Vec::with_capacity(options.queue_depth);
        for i in 0..options.queue_depth.max(1) {
            let receiver = Arc::clone(&receiver);
            let file = Arc::clone(&file);
            workers.push(std::thread::Builder::new().name(format!("mer-{name}-{i}")).spawn(move || worker(&file, &receiver))?);
        }
        Ok(PreadBackend { name, sender: Mutex::new(Some(sender)), workers })
    }
}

fn worker(file: &File, receiver: &Mutex<Receiver<Work>>) {
    loop {
        let next = receiver.lock().unwrap().recv();
        let Ok((chunk, job)) = next else { return };
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
                return Err(ReadFailure {
                    offset: chunk.offset + done as u64,
                    error: io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended before the expert's data"),
                })
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadFailure { offset: chunk.offset + done as u64, error: e }),
        }
    }
    Ok(done)
}

impl ReadBackend for PreadBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    fn submit(&self, chunks: Vec<ReadChunk>, job: Arc<ReadJob>) {
        let sender = self.sender.lock().unwrap();
        let sender = sender.as_ref().expect("the backend is shut down only when dropped");
        for chunk in chunks {
            // Sending fails only if every worker has stopped after a panic: fail the read then.
            if let Err(unsent) = sender.send((chunk, Arc::clone(&job))) {
                let (chunk, job) = unsent.0;
                let error = io::Error::other("the pread worker threads have stopped");
                job.chunk_done(Err(ReadFailure { offset: chunk.offset, error }));
            }
        }
    }
}

impl Drop for PreadBackend {
    fn drop(&mut self) {
        // Closing the channel ends each worker after its current chunk.
        self.sender.lock().unwrap().take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
