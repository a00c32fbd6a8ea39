//! The prefetcher: at each layer of a generated token, gets from the predictor the experts of the
//! coming layers and tells the store which to read ahead, as far as the governor allows.
//!
//! The governor watches how many guesses the router then confirms. The top-k guesses and the
//! extra margin guesses are tracked apart, as moving averages. Prefetching narrows to the top-k
//! when the margin rarely pays, and stops when even the top-k rarely does. The predictor keeps
//! guessing while prefetching is narrowed or off, so the governor sees when the guesses get better
//! and widens again. A wrong guess for a large expert reads it for nothing and delays the demand
//! reads behind it, so a low precision is what the governor acts on.
//!
//! Good guesses can still cost time, when reads cannot finish before their layer or when the
//! disk is already saturated by demand reads. So the governor also measures: it alternates
//! short trials with and without prefetching, compares the I/O wait per token, and turns
//! prefetching off until the next pair of trials when it waited clearly longer.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use super::predictor::Predictor;
use super::{ExpertId, ExpertStore};

/// Settings of the prefetcher.
#[derive(Clone, Copy, Debug)]
pub struct PrefetchOptions {
    /// Whether to issue prefetch reads. Predictions and recall are measured either way.
    pub enabled: bool,
    /// How many layers ahead to predict.
    pub lookahead: usize,
    /// Extra guesses beyond the experts a token uses.
    pub margin: usize,
}

impl Default for PrefetchOptions {
    fn default() -> Self {
        PrefetchOptions { enabled: true, lookahead: 1, margin: 1 }
    }
}

/// How many guesses per layer the governor lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GovernorState {
    /// The top-k guesses and the margin.
    Wide,
    /// The top-k guesses only.
    Narrow,
    /// No prefetching; the predictor still guesses, so the governor can switch back.
    Off,
}

impl fmt::Display for GovernorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GovernorState::Wide => "wide",
            GovernorState::Narrow => "narrow",
            GovernorState::Off => "off",
        })
    }
}

/// Weight of the newest observation in the moving averages: about the last 16 layers count.
const SMOOTHING: f64 = 1.0 / 16.0;
/// Below this share of confirmed margin guesses, the margin is dropped. A margin guess evicts
/// an expert and spends a read, so it has to be right fairly often to pay.
const MARGIN_FLOOR: f64 = 0.30;
/// At or above this share, the margin comes back.
const MARGIN_RESUME: f64 = 0.50;
/// Below this share of confirmed top-k guesses, prefetching stops.
const TOP_K_FLOOR: f64 = 0.25;
/// At or above this share, prefetching starts again.
const TOP_K_RESUME: f64 = 0.50;

/// The governor's state and its moving averages of confirmed guesses.
#[derive(Clone, Debug)]
pub struct Governor {
    pub state: GovernorState,
    /// Moving average of the share of top-k guesses the router confirmed.
    pub top_k_precision: f64,
    /// Moving average of the share of margin guesses the router confirmed.
    pub margin_precision: f64,
}

impl Default for Governor {
    fn default() -> Self {
        // Start optimistic: a predictor gets to show what it is worth.
        Governor { state: GovernorState::Wide, top_k_precision: 1.0, margin_precision: 1.0 }
    }
}

impl Governor {
    /// Updates the averages with one layer's outcome (the share of top-k guesses confirmed, and
    /// of margin guesses when there were any) and changes state if a threshold was crossed.
    pub fn observe(&mut self, top_k: f64, margin: Option<f64>) {
        self.top_k_precision += SMOOTHING * (top_k - self.top_k_precision);
        if let Some(margin) = margin {
            self.margin_precision += SMOOTHING * (margin - self.margin_precision);
        }
        let next = match self.state {
            _ if self.top_k_precision < TOP_K_FLOOR => GovernorState::Off,
            GovernorState::Off if self.top_k_precision >= TOP_K_RESUME => GovernorState::Narrow,
            GovernorState::Wide if self.margin_precision < MARGIN_FLOOR => GovernorState::Narrow,
            GovernorState::Narrow if self.margin_precision >= MARGIN_RESUME => GovernorState::Wide,
            state => state,
        };
        if next != self.state {
            log::debug!(
                "prefetch governor: {} -> {next} (top-k precision {:.2}, margin precision {:.2})",
                self.state,
                self.top_k_precision,
                self.margin_precision
            );
            self.state = next;
        }
    }
}

/// Tokens per trial, with prefetching and then without, and tokens that then keep the faster
/// choice before the next pair of trials.
const TRIAL_TOKENS: u32 = 4;
const SETTLED_TOKENS: u32 = 32;
/// Tokens that prefetch before the first trial. The first tokens of a run miss on empty slots
/// with or without prefetching, and a trial among them would blame those misses on whichever
/// choice ran first.
const WARM_UP_TOKENS: u32 = 8;
/// Prefetching stops only when its trial waited this share longer per token than the trial
/// without. Trials of a few tokens are noisy, and the precision governor already stops bad
/// guesses, so a near tie keeps prefetching on.
const TOLERATED_LOSS: f64 = 0.10;
/// Waits that differ by less than this (seconds per token) are a tie too. When every expert the
/// tokens use is in a slot, both trials wait close to nothing, and the share alone would turn
/// prefetching off over microseconds.
const TOLERATED_WAIT_S: f64 = 0.001;
/// A top-k precision at or above which prefetching is kept on without trials. Nearly every byte
/// such a predictor prefetches is one a demand read would fetch anyway, so a trial could only
/// lose time: on a disk-bound model, a token without prefetching took 1.7 times as long.
const TRUSTED_PRECISION: f64 = 0.9;

/// The state of the measured comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trial {
    /// Prefetching while the slots fill, before the first trial.
    WarmUp,
    /// Measuring tokens with prefetching.
    WithPrefetch,
    /// Measuring tokens without, after a trial with prefetching that waited `with` seconds per
    /// token.
    WithoutPrefetch { with: f64 },
    /// Keeping the faster choice for a while.
    Settled { prefetch: bool },
}

/// Compares, token by token, the time spent waiting for demand reads with and without
/// prefetching, and keeps the faster. Middling precision cannot tell whether prefetching pays: a
/// right guess that arrives late saves little, and every guess spends disk bandwidth that
/// demand reads need. Above `TRUSTED_PRECISION` the clock skips the trials.
#[derive(Clone, Debug)]
pub struct TrialClock {
    pub trial: Trial,
    tokens_left: u32,
    /// I/O wait (seconds, cumulative) at the start of the current trial.
    wait_at_start: f64,
}

impl Default for TrialClock {
    fn default() -> Self {
        TrialClock { trial: Trial::WarmUp, tokens_left: WARM_UP_TOKENS, wait_at_start: f64::NAN }
    }
}

impl TrialClock {
    /// Returns whether prefetching is on in the current trial or settled period.
    pub fn prefetch(&self) -> bool {
        match self.trial {
            Trial::WarmUp | Trial::WithPrefetch => true,
            Trial::WithoutPrefetch { .. } => false,
            Trial::Settled { prefetch } => prefetch,
        }
    }

    /// Counts one token that starts with `io_wait` seconds of demand waiting so far. With
    /// `trusted` (the guesses are precise), a settled period with prefetching is extended instead
    /// of ending in a trial.
    pub fn next_token(&mut self, io_wait: f64, trusted: bool) {
        if self.wait_at_start.is_nan() {
            self.wait_at_start = io_wait;
        }
        if self.tokens_left > 0 {
            self.tokens_left -= 1;
            return;
        }
        let per_token = (io_wait - self.wait_at_start) / f64::from(TRIAL_TOKENS.max(1));
        let (trial, tokens) = match self.trial {
            Trial::WithPrefetch => (Trial::WithoutPrefetch { with: per_token }, TRIAL_TOKENS),
            Trial::WithoutPrefetch { with } => {
                let prefetch = with <= per_token * (1.0 + TOLERATED_LOSS) || with - per_token <= TOLERATED_WAIT_S;
                log::debug!(
                    "prefetch trial: {:.1} ms of I/O wait per token with prefetching, {:.1} ms without; keeping it {}",
                    with * 1e3,
                    per_token * 1e3,
                    if prefetch { "on" } else { "off" }
                );
                (Trial::Settled { prefetch }, SETTLED_TOKENS)
            }
            Trial::WarmUp | Trial::Settled { prefetch: true } if trusted => {
                (Trial::Settled { prefetch: true }, SETTLED_TOKENS)
            }
            Trial::WarmUp | Trial::Settled { .. } => (Trial::WithPrefetch, TRIAL_TOKENS),
        };
        self.trial = trial;
        self.tokens_left = tokens - 1;
        self.wait_at_start = io_wait;
    }
}

/// The decision of one layer's step: the guesses made for coming layers, and the experts to read
/// ahead.
#[derive(Clone, Debug, Default)]
pub struct StepPlan {
    /// For each coming layer guessed: the layer and its experts, most likely first.
    pub predicted: Vec<(usize, Vec<usize>)>,
    /// The experts to prefetch, most urgent first.
    pub prefetch: Vec<ExpertId>,
}

/// The predictor, the governor and the guesses waiting for their layer.
pub struct Prefetcher {
    predictor: Box<dyn Predictor>,
    options: PrefetchOptions,
    n_layer: usize,
    experts_used: usize,
    state: Mutex<PrefetchState>,
}

#[derive(Default)]
struct PrefetchState {
    governor: Governor,
    trials: TrialClock,
    /// Guesses for coming layers of the current token: layer to experts, most likely first.
    guesses: HashMap<usize, Vec<usize>>,
}

impl Prefetcher {
    pub fn new(predictor: Box<dyn Predictor>, options: PrefetchOptions, n_layer: usize, experts_used: usize) -> Self {
        Prefetcher { predictor, options, n_layer, experts_used, state: Mutex::new(PrefetchState::default()) }
    }

    /// Returns the settings.
    pub fn options(&self) -> PrefetchOptions {
        self.options
    }

    /// Returns the predictor's name.
    pub fn predictor_name(&self) -> &'static str {
        self.predictor.name()
    }

    /// Returns copies of the governor and of the trial clock.
    pub fn governor(&self) -> (Governor, TrialClock) {
        let state = self.state.lock().unwrap();
        (state.governor.clone(), state.trials.clone())
    }

    /// Runs at the FFN of `layer` for one generated token whose residual stream there is `x`
    /// and whose router picked `routed`. Scores the guess made earlier for this layer, then
    /// guesses the coming layers and returns what to prefetch.
    pub fn step(&self, store: &dyn ExpertStore, layer: usize, x: &[f32], routed: &[usize]) -> StepPlan {
        let k = self.experts_used;
        let mut state = self.state.lock().unwrap();
        if layer == 0 {
            let trusted = state.governor.top_k_precision >= TRUSTED_PRECISION;
            state.trials.next_token(store.decode_io_wait_s(), trusted);
        }

        // Score the guess for this layer, and forget guesses for layers already past.
        if let Some(guess) = state.guesses.remove(&layer) {
            store.record_routing(layer, routed, &guess);
            let (top, margin) = guess.split_at(k.min(guess.len()));
            let confirmed = |part: &[usize]| part.iter().filter(|e| routed.contains(e)).count() as f64 / part.len() as f64;
            if !top.is_empty() {
                state.governor.observe(confirmed(top), (!margin.is_empty()).then(|| confirmed(margin)));
            }
        }
        state.guesses.retain(|&target, _| target > layer);

        let fan_out = match state.governor.state {
            _ if !state.trials.prefetch() => 0,
            GovernorState::Wide => k + self.options.margin,
            GovernorState::Narrow => k,
            GovernorState::Off => 0,
        };
        let mut plan = StepPlan::default();
        let last = (layer + self.options.lookahead).min(self.n_layer.saturating_sub(1));
        for target in layer + 1..=last {
            let Some(mut ranked) = self.predictor.rank(target, x) else { continue };
            ranked.truncate(k + self.options.margin);
            if self.options.enabled {
                plan.prefetch.extend(ranked.iter().take(fan_out).map(|&expert| ExpertId { layer: target, expert }));
            }
            plan.predicted.push((target, ranked.clone()));
            state.guesses.insert(target, ranked);
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a clock whose next token starts its first trial, after a warm-up with no I/O wait.
    fn warmed_up_clock() -> TrialClock {
        let mut clock = TrialClock::default();
        for _ in 0..WARM_UP_TOKENS {
            assert_eq!(clock.trial, Trial::WarmUp);
            assert!(clock.prefetch());
            clock.next_token(0.0, false);
        }
        clock
    }

    /// Runs a pair of trials after the warm-up, with `with` and `without` seconds of I/O wait per
    /// token, and returns the clock's state after them.
    fn trial_outcome(with: f64, without: f64) -> Trial {
        let mut clock = warmed_up_clock();
        let mut wait = 0.0;
        for _ in 0..=2 * TRIAL_TOKENS {
            clock.next_token(wait, false);
            wait += if clock.prefetch() { with } else { without };
        }
        clock.trial
    }

    #[test]
    fn trials_keep_prefetching_only_when_it_waits_less() {
        let mut clock = warmed_up_clock();
        let mut wait = 0.0;
        // With prefetching: 10 ms per token; without: 20 ms per token.
        for _ in 0..=TRIAL_TOKENS {
            clock.next_token(wait, false);
            wait += if clock.prefetch() { 0.010 } else { 0.020 };
        }
        assert_eq!(clock.trial, Trial::WithoutPrefetch { with: 0.010 });
        for _ in 0..TRIAL_TOKENS {
            clock.next_token(wait, false);
            wait += if clock.prefetch() { 0.010 } else { 0.020 };
        }
        assert_eq!(clock.trial, Trial::Settled { prefetch: true });

        // A near tie keeps prefetching on.
        assert_eq!(trial_outcome(0.021, 0.020), Trial::Settled { prefetch: true });

        // Waits of microseconds are a tie as well, whatever their ratio.
        assert_eq!(trial_outcome(2e-6, 1e-6), Trial::Settled { prefetch: true });

        // Precise guesses skip the trials: the clock stays settled with prefetching.
        let mut clock = warmed_up_clock();
        for _ in 0..3 * SETTLED_TOKENS {
            clock.next_token(0.0, true);
            assert_eq!(clock.trial, Trial::Settled { prefetch: true });
        }

        // Now prefetching is clearly the slower one.
        assert_eq!(trial_outcome(0.030, 0.020), Trial::Settled { prefetch: false });
    }

    #[test]
    fn governor_turns_off_when_guesses_are_wrong() {
        let mut g = Governor::default();
        for _ in 0..100 {
            g.observe(0.0, Some(0.0));
        }
        assert_eq!(g.state, GovernorState::Off);
    }

    #[test]
    fn governor_drops_margin_then_restores_it() {
        let mut g = Governor::default();
        for _ in 0..100 {
            g.observe(1.0, Some(0.0));
        }
        assert_eq!(g.state, GovernorState::Narrow);
        for _ in 0..100 {
            g.observe(1.0, Some(0.6));
        }
        assert_eq!(g.state, GovernorState::Wide);
    }

    #[test]
    fn governor_resumes_after_good_guesses() {
        let mut g = Governor::default();
        for _ in 0..100 {
            g.observe(0.0, None);
        }
        assert_eq!(g.state, GovernorState::Off);
        for _ in 0..100 {
            g.observe(1.0, None);
        }
        assert_ne!(g.state, GovernorState::Off);
    }
}
