//! The io_uring backend: one reactor thread owns the ring and keeps up to `queue_depth` reads in
//! flight. Other threads hand it chunks over a channel and wake it through an eventfd, which the
//! ring polls, so the reactor sleeps in one place whether it waits for new work or completions.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use io_uring::{opcode, squeue, types, IoUring};

use super::{IoOptions, PendingReads, ReadBackend, ReadChunk, ReadFailure, ReadJob};

/// Marks the eventfd poll in `user_data`; read requests use their index in the in-flight table.
const WAKE: u64 = u64::MAX;

enum Message {
    Read(ReadChunk, Arc<ReadJob>),
    /// Fixed buffers to register: (start address, length) of each slot, and where to report
    /// that registration is done.
    Register(Vec<(usize, usize)>, Sender<()>),
}

/// The reactor thread and the channel to it.
pub struct UringBackend {
    sender: Mutex<Option<Sender<Message>>>,
    wake: Arc<OwnedFd>,
    reactor: Option<JoinHandle<()>>,
}

/// Whether a failure to set up io_uring means "not allowed or not available here", so that
/// `auto` should fall back, rather than a real error.
pub fn is_refusal(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EPERM | libc::ENOSYS | libc::EOPNOTSUPP | libc::EACCES))
}

impl UringBackend {
    pub fn new(file: File, options: IoOptions) -> io::Result<Self> {
        // A test hook: MER_TEST_IO_URING_ERROR=EPERM makes setup fail as a seccomp profile would.
        if let Ok(name) = std::env::var("MER_TEST_IO_URING_ERROR") {
            let code = match name.as_str() {
                "EPERM" => libc::EPERM,
                "ENOSYS" => libc::ENOSYS,
                _ => libc::EOPNOTSUPP,
            };
            return Err(io::Error::from_raw_os_error(code));
        }
        let depth = options.queue_depth.clamp(1, 4096) as u32;
        // Room for every read in flight plus the eventfd poll.
        let ring = IoUring::new((depth + 1).next_power_of_two())?;

        // SAFETY: eventfd has no memory-safety preconditions; the result is checked below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new, valid file descriptor that nothing else owns.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });

        let (sender, receiver) = channel();
        let reactor_wake = Arc::clone(&wake);
        let reactor = std::thread::Builder::new().name("mer-io-uring".into()).spawn(move || {
            let mut reactor = Reactor { ring, file, wake: reactor_wake, depth: depth as usize, in_flight: Vec::new(), free: Vec::new(), fixed: Vec::new() };
            reactor.run(&receiver);
        })?;
        Ok(UringBackend { sender: Mutex::new(Some(sender)), wake, reactor: Some(reactor) })
    }

    fn send(&self, message: Message) {
        if let Some(sender) = self.sender.lock().unwrap().as_ref() {
            if let Err(unsent) = sender.send(message) {
                fail_unsent(unsent.0);
            }
        }
        notify(&self.wake);
    }
}

/// Fails a read that could not reach the reactor (it stopped after a panic), so that no caller
/// waits for it forever.
fn fail_unsent(message: Message) {
    if let Message::Read(chunk, job) = message {
        let error = io::Error::other("the io_uring reactor thread has stopped");
        job.chunk_done(Err(ReadFailure::new(chunk.offset, error)));
    }
}

fn notify(wake: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A full counter (EAGAIN)
    // already means "wake up", so the result needs no check.
    unsafe { libc::write(wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

impl ReadBackend for UringBackend {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn submit(&self, chunks: Vec<ReadChunk>, job: Arc<ReadJob>) {
        let sender = self.sender.lock().unwrap();
        for chunk in chunks {
            let message = Message::Read(chunk, Arc::clone(&job));
            match sender.as_ref() {
                Some(sender) => {
                    if let Err(unsent) = sender.send(message) {
                        fail_unsent(unsent.0);
                    }
                }
                None => fail_unsent(message),
            }
        }
        drop(sender);
        notify(&self.wake);
    }

    fn register_buffers(&self, buffers: &[&[u8]]) {
        // Wait for the reactor to finish: it logs the outcome, and a log record from the reactor
        // needs the Python GIL, which this caller has released. Logging later, while a caller
        // holding the GIL joins the reactor on drop, would deadlock.
        let (done, finished) = channel();
        self.send(Message::Register(buffers.iter().map(|b| (b.as_ptr() as usize, b.len())).collect(), done));
        let _ = finished.recv();
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        self.sender.lock().unwrap().take();
        notify(&self.wake);
        if let Some(reactor) = self.reactor.take() {
            let _ = reactor.join();
        }
    }
}

/// A read in flight: the chunk, how much of it has arrived, and its job.
struct InFlight {
    chunk: ReadChunk,
    done: usize,
    job: Arc<ReadJob>,
}

struct Reactor {
    ring: IoUring,
    file: File,
    wake: Arc<OwnedFd>,
    depth: usize,
    in_flight: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Registered buffers: (start address, length), indexed by buffer index.
    fixed: Vec<(usize, usize)>,
}

impl Reactor {
    fn run(&mut self, receiver: &Receiver<Message>) {
        let mut waiting = PendingReads::default();
        let mut poll_armed = false;
        let mut closed = false;
        loop {
            // Take every message that has arrived.
            loop {
                match receiver.try_recv() {
                    Ok(Message::Read(chunk, job)) => waiting.push(chunk, job),
                    Ok(Message::Register(buffers, done)) => {
                        self.register(buffers);
                        let _ = done.send(());
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let busy = self.in_flight.len() - self.free.len();
            if closed && busy == 0 && waiting.is_empty() {
                return;
            }

            // Fill the ring up to the queue depth.
            while self.in_flight.len() - self.free.len() < self.depth {
                let Some((chunk, job)) = waiting.pop() else { break };
                let index = self.free.pop().unwrap_or_else(|| {
                    self.in_flight.push(None);
                    self.in_flight.len() - 1
                });
                self.in_flight[index] = Some(InFlight { chunk, done: 0, job });
                self.push_read(index);
            }
            if !poll_armed && !closed {
                let poll = opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32).build().user_data(WAKE);
                self.push(&poll);
                poll_armed = true;
            }

            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    log::error!("io_uring submit failed: {e}; every further read fails");
                    self.fail_all(&mut waiting, &e);
                    fail_until_closed(receiver, &e);
                    return;
                }
            }

            let completions: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
            for (user_data, result) in completions {
                if user_data == WAKE {
                    let mut counter = 0u64;
                    // SAFETY: reads 8 bytes into a live u64 from the non-blocking eventfd we own.
                    unsafe { libc::read(self.wake.as_raw_fd(), (&mut counter as *mut u64).cast(), 8) };
                    poll_armed = false;
                } else {
                    self.complete(user_data as usize, result);
                }
            }
        }
    }

    fn register(&mut self, buffers: Vec<(usize, usize)>) {
        let iovecs: Vec<libc::iovec> =
            buffers.iter().map(|&(base, len)| libc::iovec { iov_base: base as *mut libc::c_void, iov_len: len }).collect();
        // SAFETY: the buffers are slot memory that the store keeps allocated for as long as this
        // backend lives (the store drops the backend before the slots).
        match unsafe { self.ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => {
                log::debug!("registered {} slot buffers with io_uring", buffers.len());
                self.fixed = buffers;
            }
            Err(e) => log::info!("io_uring buffer registration failed ({e}); reading without registered buffers"),
        }
    }

    /// Finds the registered buffer that contains `len` bytes at `address`.
    fn fixed_index(&self, address: usize, len: usize) -> Option<u16> {
        let index = self.fixed.iter().position(|&(base, size)| address >= base && address + len <= base + size)?;
        u16::try_from(index).ok()
    }

    fn push_read(&mut self, index: usize) {
        let read = self.in_flight[index].as_ref().expect("slot in use");
        let offset = read.chunk.offset + read.done as u64;
        // SAFETY: `done < len`, so the pointer stays inside the chunk's buffer.
        let dst = unsafe { read.chunk.dst.add(read.done) };
        let len = (read.chunk.len - read.done) as u32;
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = match self.fixed_index(dst as usize, len as usize) {
            Some(buf_index) => opcode::ReadFixed::new(fd, dst, len, buf_index).offset(offset).build(),
            None => opcode::Read::new(fd, dst, len).offset(offset).build(),
        };
        self.push(&entry.user_data(index as u64));
    }

    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every buffer a read entry names stays valid until its completion is reaped
            // (see `ReadChunk`), and the eventfd outlives the ring.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            // The submission queue is full: hand it to the kernel and retry.
            if let Err(e) = self.ring.submit() {
                log::error!("io_uring submit failed: {e}");
            }
        }
    }

    fn complete(&mut self, index: usize, result: i32) {
        let Some(read) = self.in_flight.get_mut(index).and_then(Option::as_mut) else { return };
        let outcome = if result < 0 {
            let error = io::Error::from_raw_os_error(-result);
            if error.kind() == io::ErrorKind::Interrupted {
                self.push_read(index);
                return;
            }
            Some(Err(ReadFailure::new(read.chunk.offset + read.done as u64, error)))
        } else if result == 0 && read.done < read.chunk.required {
            Some(Err(ReadFailure::new(
                read.chunk.offset + read.done as u64,
                io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended before the expert's data"),
            )))
        } else {
            read.done += result as usize;
            if read.done >= read.chunk.required || result == 0 {
                Some(Ok(read.done))
            } else {
                None
            }
        };
        match outcome {
            None => self.push_read(index),
            Some(result) => {
                let read = self.in_flight[index].take().expect("slot in use");
                self.free.push(index);
                read.job.chunk_done(result);
            }
        }
    }

    fn fail_all(&mut self, waiting: &mut PendingReads, error: &io::Error) {
        for read in self.in_flight.iter_mut().filter_map(Option::take) {
            let failure = ReadFailure::new(read.chunk.offset, io::Error::new(error.kind(), error.to_string()));
            read.job.chunk_done(Err(failure));
        }
        for (chunk, job) in waiting.drain() {
            job.chunk_done(Err(ReadFailure::new(chunk.offset, io::Error::new(error.kind(), error.to_string()))));
        }
    }
}

/// Fails every read that arrives after the ring broke, so no caller waits forever.
fn fail_until_closed(receiver: &Receiver<Message>, error: &io::Error) {
    while let Ok(message) = receiver.recv() {
        if let Message::Read(chunk, job) = message {
            job.chunk_done(Err(ReadFailure::new(chunk.offset, io::Error::new(error.kind(), error.to_string()))));
        }
    }
}
