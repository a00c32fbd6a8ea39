//! The one error type of the core crate.
//!
//! Each variant maps to one Python exception class in the binding crate, and each message names
//! the file, the key or tensor, and the byte offset or value that was wrong.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the core crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while opening a model or running it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system failed a file operation (open, stat, read).
    #[error("{path}: {context}: {source}")]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// The operation that failed, such as "failed to read tensor blk.0.attn_q.weight at offset 1234".
        context: String,
        /// The underlying error.
        source: io::Error,
    },

    /// The file is not a valid GGUF model: truncated, inconsistent or out of range.
    #[error("{path}: invalid GGUF{}: {message}", at_offset(*offset))]
    Format {
        /// The model file.
        path: PathBuf,
        /// Byte offset in the file where the problem was found, when it has one (a missing key
        /// or tensor has none).
        offset: Option<u64>,
        /// The problem, naming the key or tensor.
        message: String,
    },

    /// The file is valid GGUF, but uses an architecture, tensor type or layout MER does not run.
    #[error("{path}: {message}")]
    Unsupported {
        /// The model file.
        path: PathBuf,
        /// The unsupported feature, naming the key, tensor or type.
        message: String,
    },

    /// Reading an expert from the model file failed or came up short.
    #[error("{path}: {message}")]
    ExpertRead {
        /// The model file.
        path: PathBuf,
        /// The failed read, naming the layer, expert, tensor and offset.
        message: String,
    },

    /// The RAM budget is too small, or its slots could not be allocated.
    #[error("{0}")]
    Budget(String),

    /// A caller passed an invalid value, such as a token id outside the vocabulary.
    #[error("{0}")]
    InvalidArgument(String),

    /// The context window is full.
    #[error("context is full: {n_ctx} tokens is the maximum for this model; start a new context")]
    ContextFull {
        /// The maximum number of tokens in one context.
        n_ctx: usize,
    },
}

fn at_offset(offset: Option<u64>) -> String {
    offset.map_or_else(String::new, |o| format!(" at byte offset {o}"))
}

impl Error {
    pub(crate) fn format(path: &Path, offset: impl Into<Option<u64>>, message: impl Into<String>) -> Self {
        Error::Format { path: path.to_path_buf(), offset: offset.into(), message: message.into() }
    }

    pub(crate) fn unsupported(path: &Path, message: impl Into<String>) -> Self {
        Error::Unsupported { path: path.to_path_buf(), message: message.into() }
    }

    pub(crate) fn io(path: &Path, context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), context: context.into(), source }
    }
}
