//! Run statistics: tokens and time, with the prompt phase counted apart from decoding.

use std::time::Duration;

/// The phase a forward call belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Tokens of the prompt (including teacher-forced evaluation).
    Prompt,
    /// Tokens produced by generation, one per call.
    Decode,
}

/// Token counts and wall time per phase.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub prompt_tokens: u64,
    pub prompt_s: f64,
    pub decode_tokens: u64,
    pub decode_s: f64,
}

impl RunStats {
    /// Adds one forward call of `tokens` tokens that took `elapsed`.
    pub fn record(&mut self, phase: Phase, tokens: usize, elapsed: Duration) {
        let (count, seconds) = match phase {
            Phase::Prompt => (&mut self.prompt_tokens, &mut self.prompt_s),
            Phase::Decode => (&mut self.decode_tokens, &mut self.decode_s),
        };
        *count += tokens as u64;
        *seconds += elapsed.as_secs_f64();
    }

    /// Prompt tokens per second, or 0 before any prompt.
    pub fn prompt_tokens_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_s)
    }

    /// Decode tokens per second, or 0 before any decode step.
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.decode_tokens, self.decode_s)
    }
}

fn rate(tokens: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

/// Peak resident set size of this process in bytes (VmHWM), or 0 where /proc is unavailable.
pub fn peak_rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Memory available for new allocations (MemAvailable in /proc/meminfo), if known.
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let rest = meminfo.lines().find_map(|line| line.strip_prefix("MemAvailable:"))?;
    rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kib| kib * 1024)
}
