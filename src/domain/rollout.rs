//! Progressive rollouts as plain values: the sticky assignment of agents to
//! arms, the rollout's recorded state, its field rules, and the decision a
//! step's evidence leads to (`evaluate`, with the statistics in
//! `rollout/stats.rs`). The registry feeds it evidence and commits what it
//! decides; nothing here knows about storage or time sources.

mod stats;
#[cfg(test)]
mod tests;
mod verdict;

pub use stats::{wilson, Counts, Interval, BUCKETS, LATENCY_BOUNDS_MS};
pub use verdict::{evaluate, Evidence, Verdict};

use super::{ContentDigest, LabelName, Micros, PromptName, ValidationError};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Basis points of a whole fleet.
pub const FULL_BP: u32 = 10_000;
/// Most steps a rollout may have.
pub const MAX_STEPS: usize = 20;
/// Most absolute guardrails.
pub const MAX_GUARDRAILS: usize = 8;
/// Most extensions of one step.
pub const MAX_EXTENSIONS: u32 = 20;
/// `min_samples` when the request leaves it 0.
pub const DEFAULT_MIN_SAMPLES: u64 = 200;
/// Shortest and longest bake.
pub const BAKE_RANGE_SECS: (u64, u64) = (1, 30 * 86_400);
/// Longest salt and sticky attribute, in bytes.
pub const MAX_SALT_BYTES: usize = 64;
/// The comparative test's family-wise error rate per step.
pub const ALPHA: f64 = 0.05;

/// The bucket of `key` under `salt`, in 0..9999: the first 8 bytes of
/// SHA-256("promptreg.bucket.v1\n" ‖ salt ‖ "\n" ‖ key), big-endian, times
/// 10000, over 2^64 (exactly, in 128 bits). The proto documents it with
/// test vectors; `tests/rollout_vectors.rs` checks them from Python.
pub fn bucket(salt: &str, key: &str) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(b"promptreg.bucket.v1\n");
    hasher.update(salt.as_bytes());
    hasher.update(b"\n");
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let x = u64::from_be_bytes(first) as u128;
    ((x * FULL_BP as u128) >> 64) as u32
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    Running,
    Paused,
    Aborted,
    Completed,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Aborted => "aborted",
            RolloutState::Completed => "completed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Running, Self::Paused, Self::Aborted, Self::Completed]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }

    /// Running or paused: the label is under rollout.
    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

/// An agent's side of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arm {
    Stable,
    Candidate,
}

impl Arm {
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Stable => "stable",
            Arm::Candidate => "candidate",
        }
    }
}

/// What an absolute guardrail measures on the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    ErrorRate,
    SafetyRate,
    PolicyRate,
    LatencyP95Ms,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::ErrorRate,
        Metric::SafetyRate,
        Metric::PolicyRate,
        Metric::LatencyP95Ms,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::ErrorRate => "error_rate",
            Metric::SafetyRate => "safety_rate",
            Metric::PolicyRate => "policy_rate",
            Metric::LatencyP95Ms => "latency_p95_ms",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == raw)
    }

    /// The metric's value over `counts` (NaN without requests or, for
    /// latency, without a histogram).
    pub fn value(self, counts: &Counts) -> f64 {
        match self {
            Metric::ErrorRate => counts.rate(counts.errors),
            Metric::SafetyRate => counts.rate(counts.safety_violations),
            Metric::PolicyRate => counts.rate(counts.policy_violations),
            Metric::LatencyP95Ms => counts.latency_quantile_ms(0.95),
        }
    }
}

/// The candidate's `metric` must stay at or below `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Guardrail {
    pub metric: Metric,
    pub max: f64,
}

impl Guardrail {
    /// `error_rate<=0.02`, as the CLI takes it.
    pub fn parse(field: &str, raw: &str) -> Result<Self, ValidationError> {
        let bad = || {
            ValidationError::new(
                field,
                format!(
                    "{raw:?} is not a guardrail: METRIC<=VALUE with METRIC one of {}",
                    Metric::ALL.map(Metric::as_str).join(", ")
                ),
            )
        };
        let (metric, max) = raw.split_once("<=").ok_or_else(bad)?;
        let metric = Metric::parse(metric.trim()).ok_or_else(bad)?;
        let max: f64 = max.trim().parse().map_err(|_| bad())?;
        let guardrail = Guardrail { metric, max };
        guardrail.check(field)?;
        Ok(guardrail)
    }

    fn check(&self, field: &str) -> Result<(), ValidationError> {
        let fine = match self.metric {
            Metric::LatencyP95Ms => self.max.is_finite() && self.max > 0.0,
            _ => (0.0..=1.0).contains(&self.max),
        };
        if fine {
            return Ok(());
        }
        Err(ValidationError::new(
            field,
            format!(
                "{}<={} is out of range: a rate's limit is in 0..1, a latency's above 0 ms",
                self.metric.as_str(),
                self.max
            ),
        ))
    }
}

impl std::fmt::Display for Guardrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}<={}", self.metric.as_str(), self.max)
    }
}

/// How a rollout goes.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    /// Strictly increasing weights in basis points, the last 10000.
    pub steps_bp: Vec<u32>,
    pub bake_secs: u64,
    pub guardrails: Vec<Guardrail>,
    pub max_error_rate_increase: Option<f64>,
    pub min_samples: u64,
    pub max_extensions: u32,
    pub pause_when_inconclusive: bool,
    /// Always set once validated (random when the request left it empty).
    pub salt: String,
    /// The attribute agents are assigned by; `None`: the agent id.
    pub sticky_by: Option<String>,
}

impl RolloutSpec {
    /// Every field rule of a spec (fields under `spec.`); an empty salt is
    /// replaced by `random_salt`, a zero `min_samples` by the default.
    pub fn validate(
        mut self,
        random_salt: impl FnOnce() -> String,
    ) -> Result<Self, ValidationError> {
        let steps = &self.steps_bp;
        if steps.is_empty() || steps.len() > MAX_STEPS {
            return Err(ValidationError::new(
                "spec.steps_bp",
                format!("1 to {MAX_STEPS} steps are needed"),
            ));
        }
        for (i, w) in steps.iter().enumerate() {
            if *w == 0 || *w > FULL_BP || (i > 0 && *w <= steps[i - 1]) {
                return Err(ValidationError::new(
                    format!("spec.steps_bp[{i}]"),
                    format!("{w} is not a step weight: each is 1..10000 basis points and above the one before"),
                ));
            }
        }
        if steps.last() != Some(&FULL_BP) {
            return Err(ValidationError::new(
                "spec.steps_bp",
                "the last step must be 10000 (100%): a rollout ends with everyone on the candidate",
            ));
        }
        let (low, high) = BAKE_RANGE_SECS;
        if !(low..=high).contains(&self.bake_secs) {
            return Err(ValidationError::new(
                "spec.bake_seconds",
                format!("{} s is not a bake time: 1 s to 30 days", self.bake_secs),
            ));
        }
        if self.guardrails.len() > MAX_GUARDRAILS {
            return Err(ValidationError::new(
                "spec.guardrails",
                format!("at most {MAX_GUARDRAILS} guardrails"),
            ));
        }
        for (i, g) in self.guardrails.iter().enumerate() {
            g.check(&format!("spec.guardrails[{i}]"))?;
        }
        if let Some(delta) = self.max_error_rate_increase {
            if !(0.0..=1.0).contains(&delta) {
                return Err(ValidationError::new(
                    "spec.max_error_rate_increase",
                    format!("{delta} is not in 0..1"),
                ));
            }
        }
        if self.max_extensions > MAX_EXTENSIONS {
            return Err(ValidationError::new(
                "spec.max_extensions",
                format!("at most {MAX_EXTENSIONS}"),
            ));
        }
        if self.min_samples == 0 {
            self.min_samples = DEFAULT_MIN_SAMPLES;
        }
        check_token("spec.salt", &self.salt, true)?;
        if self.salt.is_empty() {
            self.salt = random_salt();
        }
        if let Some(key) = &self.sticky_by {
            check_token("spec.sticky_by", key, false)?;
        }
        Ok(self)
    }
}

/// Printable ASCII without spaces, at most 64 bytes (empty only when
/// `may_be_empty`).
fn check_token(field: &str, raw: &str, may_be_empty: bool) -> Result<(), ValidationError> {
    let fine = raw.len() <= MAX_SALT_BYTES
        && (may_be_empty || !raw.is_empty())
        && raw.bytes().all(|b| b.is_ascii_graphic());
    if fine {
        return Ok(());
    }
    Err(ValidationError::new(
        field,
        format!(
            "{raw:?} is not valid: 1 to {MAX_SALT_BYTES} printable ASCII characters, no spaces"
        ),
    ))
}

/// A version on one side of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub version: u64,
    pub digest: ContentDigest,
}

/// A rollout as recorded at one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub id: u64,
    pub name: PromptName,
    pub label: LabelName,
    pub stable: Side,
    pub candidate: Side,
    pub state: RolloutState,
    /// Index into `spec.steps_bp`.
    pub step: u32,
    pub weight_bp: u32,
    /// The candidate's share agents followed just before this revision.
    pub previous_weight_bp: u32,
    pub spec: RolloutSpec,
    pub extensions: u32,
    pub step_started: Micros,
    pub started_by: String,
    pub started_at: Micros,
    pub request_id: Option<u64>,
}

impl Rollout {
    /// The candidate's share agents follow now: the weight while running or
    /// paused, nothing once aborted, everyone once completed.
    pub fn exposure_bp(&self) -> u32 {
        match self.state {
            RolloutState::Running | RolloutState::Paused => self.weight_bp,
            RolloutState::Aborted => 0,
            RolloutState::Completed => FULL_BP,
        }
    }

    /// The key an agent is assigned by: its id, or its `sticky_by`
    /// attribute (`None` when it has not declared it).
    pub fn key<'a>(
        &self,
        agent_id: &'a str,
        attributes: &'a BTreeMap<String, String>,
    ) -> Option<&'a str> {
        match &self.spec.sticky_by {
            None => Some(agent_id),
            Some(attribute) => attributes.get(attribute).map(String::as_str),
        }
    }

    /// The bucket of a key under this rollout's salt.
    pub fn bucket(&self, key: &str) -> u32 {
        bucket(&self.spec.salt, key)
    }

    /// The arm of a bucket (`None`: no key) at a candidate share.
    pub fn arm_at(&self, exposure_bp: u32, bucket: Option<u32>, completed: bool) -> Arm {
        if completed || bucket.is_some_and(|b| b < exposure_bp) {
            Arm::Candidate
        } else {
            Arm::Stable
        }
    }

    /// The arm of a bucket now.
    pub fn arm(&self, bucket: Option<u32>) -> Arm {
        self.arm_at(
            self.exposure_bp(),
            bucket,
            self.state == RolloutState::Completed,
        )
    }

    /// The arm of a bucket just before this revision.
    pub fn previous_arm(&self, bucket: Option<u32>) -> Arm {
        self.arm_at(self.previous_weight_bp, bucket, false)
    }

    pub fn side(&self, arm: Arm) -> &Side {
        match arm {
            Arm::Stable => &self.stable,
            Arm::Candidate => &self.candidate,
        }
    }

    pub fn is_last_step(&self) -> bool {
        self.step as usize + 1 >= self.spec.steps_bp.len()
    }

    /// When the current step is decided next: one bake after the cohort was
    /// exposed (or, until it is, after the step began), plus one bake per
    /// extension.
    pub fn decision_due(&self, exposed_at: Option<Micros>) -> Micros {
        let base = exposed_at
            .unwrap_or(self.step_started)
            .max(self.step_started);
        let bake = (self.spec.bake_secs as i64).saturating_mul(1_000_000);
        base.saturating_add(bake.saturating_mul(self.extensions as i64 + 1))
    }

    /// The Bonferroni-adjusted two-sided confidence level of the
    /// comparative test: one step's looks (its end and each extension)
    /// share `ALPHA`.
    pub fn comparison_level(&self) -> f64 {
        1.0 - ALPHA / (self.spec.max_extensions as f64 + 1.0)
    }
}

/// What a rollout becomes; each is one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The next step (from the last step: completion).
    Advance,
    /// One more bake of the current step.
    Extend,
    Pause,
    Resume,
    Abort,
    /// 100% now: completion.
    Promote,
}

impl Rollout {
    /// The rollout after `transition` at `now`, or why it cannot happen.
    pub fn after(&self, transition: Transition, now: Micros) -> Result<Rollout, String> {
        use RolloutState::*;
        let mut next = Rollout {
            previous_weight_bp: self.exposure_bp(),
            ..self.clone()
        };
        let state = self.state.as_str();
        match (transition, self.state) {
            (_, Aborted | Completed) => {
                return Err(format!("rollout {} has ended ({state})", self.id));
            }
            (Transition::Pause, Paused) => {
                return Err(format!("rollout {} is paused already", self.id))
            }
            (Transition::Resume, Running) => {
                return Err(format!("rollout {} is not paused", self.id))
            }
            (Transition::Extend, Paused) => return Err(format!("rollout {} is paused", self.id)),
            (Transition::Pause, Running) => next.state = Paused,
            (Transition::Resume, Paused) => {
                next.state = Running;
                next.step_started = now;
                next.extensions = 0;
            }
            (Transition::Extend, Running) => next.extensions += 1,
            (Transition::Abort, _) => next.state = Aborted,
            (Transition::Promote, _) => {
                next.state = Completed;
                next.weight_bp = FULL_BP;
            }
            (Transition::Advance, _) if self.is_last_step() => {
                next.state = Completed;
                next.weight_bp = FULL_BP;
            }
            (Transition::Advance, _) => {
                next.step += 1;
                next.weight_bp = self.spec.steps_bp[next.step as usize];
                next.step_started = now;
                next.extensions = 0;
            }
        }
        Ok(next)
    }
}

/// Most requests one outcome report may count.
pub const MAX_REPORT_REQUESTS: u64 = 1_000_000_000;

/// The field rules of one outcome report's counts.
pub fn check_counts(counts: &Counts) -> Result<(), ValidationError> {
    if counts.requests > MAX_REPORT_REQUESTS {
        return Err(ValidationError::new(
            "requests",
            format!(
                "{} is over {MAX_REPORT_REQUESTS} for one report: report every few seconds",
                counts.requests
            ),
        ));
    }
    for (field, n) in [
        ("errors", counts.errors),
        ("safety_violations", counts.safety_violations),
        ("policy_violations", counts.policy_violations),
    ] {
        if n > counts.requests {
            return Err(ValidationError::new(
                field,
                format!("{n} is more than the {} requests reported", counts.requests),
            ));
        }
    }
    if !(counts.latency_ms_sum.is_finite() && counts.latency_ms_sum >= 0.0) {
        return Err(ValidationError::new(
            "latency_ms_sum",
            "must be a finite number of milliseconds, 0 or more",
        ));
    }
    let in_buckets: u64 = counts.latency_buckets.iter().sum();
    if in_buckets != 0 && in_buckets != counts.requests {
        return Err(ValidationError::new(
            "latency_buckets",
            format!(
                "the buckets hold {in_buckets} requests, not the {} reported",
                counts.requests
            ),
        ));
    }
    Ok(())
}

/// Basis points as a percentage: `12.5%`.
pub fn percent(bp: u32) -> String {
    let whole = bp / 100;
    match bp % 100 {
        0 => format!("{whole}%"),
        frac if frac % 10 == 0 => format!("{whole}.{}%", frac / 10),
        frac => format!("{whole}.{frac:02}%"),
    }
}

/// Steps as the CLI takes them: `1%,5%,25%,100%` (percentages, to 0.01%)
/// or basis points (`100,500,2500,10000`).
pub fn parse_steps(field: &str, raw: &str) -> Result<Vec<u32>, ValidationError> {
    raw.split(',')
        .map(|part| {
            let part = part.trim();
            let bad = || {
                ValidationError::new(
                    field,
                    format!(
                        "{part:?} is not a step: a percentage such as 5% or 0.5%, or basis points"
                    ),
                )
            };
            match part.strip_suffix('%') {
                Some(pct) => {
                    let value: f64 = pct.trim().parse().map_err(|_| bad())?;
                    let bp = (value * 100.0).round();
                    if !(0.0..=FULL_BP as f64).contains(&bp) || (bp - value * 100.0).abs() > 1e-6 {
                        return Err(bad());
                    }
                    Ok(bp as u32)
                }
                None => part.parse().map_err(|_| bad()),
            }
        })
        .collect()
}
