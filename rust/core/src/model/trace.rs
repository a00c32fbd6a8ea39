//! The routing trace: for each layer of each batch, the experts the router picked, the store
//! requests that fetched them, the predictor's guesses and the prefetches issued. `mer replay`
//! reads it back to compare cache policies and predictors without computing.
//!
//! The file is JSON Lines: a header object, then one object per layer of each batch, in the
//! order the forward pass ran them. Lines are flushed at the end of each `eval` call. A run
//! that fails or is killed part-way can leave the last batch incomplete, or its last line cut
//! off when the disk is full.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::stats::Phase;
use crate::store::ExpertId;

/// Format name and version written in the header.
pub const TRACE_FORMAT: &str = "mer-trace";
pub const TRACE_VERSION: u32 = 1;

/// The settings of the run that the header records.
pub struct TraceHeader<'a> {
    pub model: &'a str,
    pub n_layer: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub expert_bytes: u64,
    pub slot_bytes: u64,
    pub slots: usize,
    pub policy: &'a str,
    pub predictor: &'a str,
    pub prefetch: bool,
    pub lookahead: usize,
    pub margin: usize,
}

/// One layer of one batch.
pub struct TraceStep<'a> {
    pub batch: u64,
    pub phase: Phase,
    pub layer: usize,
    /// Per token, its experts in ascending id order.
    pub routed: &'a [Vec<usize>],
    /// The store requests of the step, in order.
    pub groups: &'a [&'a [usize]],
    /// Guessed layers and their experts, most likely first.
    pub predicted: &'a [(usize, Vec<usize>)],
    pub prefetched: &'a [ExpertId],
}

/// Writes a routing trace.
pub struct TraceWriter {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

impl TraceWriter {
    /// Creates (or truncates) the trace file and writes its header.
    pub fn create(path: &Path, header: &TraceHeader<'_>) -> Result<Self> {
        let file = File::create(path).map_err(|e| Error::io(path, "failed to create the routing trace", e))?;
        let writer = TraceWriter { path: path.to_path_buf(), out: Mutex::new(BufWriter::new(file)) };
        let line = format!(
            "{{\"format\": \"{TRACE_FORMAT}\", \"version\": {TRACE_VERSION}, \"model\": {}, \"n_layer\": {}, \"n_expert\": {}, \
             \"n_expert_used\": {}, \"expert_bytes\": {}, \"slot_bytes\": {}, \"slots\": {}, \"policy\": {}, \"predictor\": {}, \
             \"prefetch\": {}, \"lookahead\": {}, \"margin\": {}}}",
            json_string(header.model),
            header.n_layer,
            header.n_expert,
            header.n_expert_used,
            header.expert_bytes,
            header.slot_bytes,
            header.slots,
            json_string(header.policy),
            json_string(header.predictor),
            header.prefetch,
            header.lookahead,
            header.margin
        );
        writer.write_line(&line)?;
        writer.flush()?;
        Ok(writer)
    }

    /// Appends one step.
    pub fn step(&self, step: &TraceStep<'_>) -> Result<()> {
        let routed: Vec<String> = step.routed.iter().map(|experts| json_list(experts)).collect();
        let groups: Vec<String> = step.groups.iter().map(|group| json_list(group)).collect();
        let predicted: Vec<String> =
            step.predicted.iter().map(|(layer, experts)| format!("\"{layer}\": {}", json_list(experts))).collect();
        let prefetched: Vec<String> = step.prefetched.iter().map(|id| format!("[{}, {}]", id.layer, id.expert)).collect();
        let phase = match step.phase {
            Phase::Prompt => "prompt",
            Phase::Decode => "decode",
        };
        self.write_line(&format!(
            "{{\"batch\": {}, \"phase\": \"{phase}\", \"layer\": {}, \"routed\": [{}], \"groups\": [{}], \"predicted\": {{{}}}, \
             \"prefetched\": [{}]}}",
            step.batch,
            step.layer,
            routed.join(", "),
            groups.join(", "),
            predicted.join(", "),
            prefetched.join(", ")
        ))
    }

    /// Writes buffered lines to the file.
    pub fn flush(&self) -> Result<()> {
        self.out.lock().unwrap().flush().map_err(|e| Error::io(&self.path, "failed to write the routing trace", e))
    }

    fn write_line(&self, line: &str) -> Result<()> {
        let mut out = self.out.lock().unwrap();
        writeln!(out, "{line}").map_err(|e| Error::io(&self.path, "failed to write the routing trace", e))
    }
}

fn json_list(values: &[usize]) -> String {
    let items: Vec<String> = values.iter().map(usize::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// Quotes `text` as a JSON string.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_string_escapes_quotes_and_controls() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn json_list_of_numbers() {
        assert_eq!(json_list(&[1, 5]), "[1, 5]");
        assert_eq!(json_list(&[]), "[]");
    }
}
