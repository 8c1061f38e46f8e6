//! What a running rollout's step evidence decides: abort on a breach at
//! any evaluation; at the step's end advance, extend, pause or abort, with
//! missing or thin evidence inconclusive, never a pass.

use super::{stats, Counts, Rollout, RolloutSpec, RolloutState, FULL_BP};
use crate::domain::Micros;

/// What a step's evidence is, as the registry measured it.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub stable: Counts,
    pub candidate: Counts,
    /// Connected agents assigned to the candidate, and of those the ones
    /// that acknowledged it.
    pub candidate_agents: u32,
    pub candidate_acked: u32,
    /// Connected agents assigned to the stable version.
    pub stable_agents: u32,
    /// When every candidate agent had acknowledged the candidate.
    pub exposed_at: Option<Micros>,
}

/// What the evidence decides for a running rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not yet due, or nothing to do.
    Hold,
    /// The step passed: the next step, or completion after the last.
    Advance { reason: String },
    /// A breach: every agent back on stable.
    Abort { reason: String },
    /// Inconclusive at the step's end: one more bake.
    Extend { reason: String },
    /// Inconclusive with the extensions used up, and pausing asked for.
    Pause { reason: String },
}

/// Decides a running rollout's step at `now` (see the proto's "EXPOSURE
/// AND EVIDENCE"). A breach on enough candidate requests aborts at any
/// evaluation; everything else waits for the step's end, where missing or
/// thin evidence is inconclusive, never a pass.
pub fn evaluate(rollout: &Rollout, evidence: &Evidence, now: Micros) -> Verdict {
    if rollout.state != RolloutState::Running {
        return Verdict::Hold;
    }
    let spec = &rollout.spec;
    let candidate = &evidence.candidate;
    if candidate.requests >= spec.min_samples {
        if let Some(reason) = breach(spec, candidate) {
            return Verdict::Abort { reason };
        }
    }
    if now < rollout.decision_due(evidence.exposed_at) {
        return Verdict::Hold;
    }
    match judge(rollout, evidence) {
        Judgement::Pass(reason) => Verdict::Advance { reason },
        Judgement::Fail(reason) => Verdict::Abort { reason },
        Judgement::Inconclusive(why) => {
            if rollout.extensions < spec.max_extensions {
                Verdict::Extend {
                    reason: format!(
                        "inconclusive: {why}; extension {} of {}",
                        rollout.extensions + 1,
                        spec.max_extensions
                    ),
                }
            } else {
                let reason = format!(
                    "inconclusive after {} extension(s): {why}",
                    spec.max_extensions
                );
                if spec.pause_when_inconclusive {
                    Verdict::Pause { reason }
                } else {
                    Verdict::Abort { reason }
                }
            }
        }
    }
}

enum Judgement {
    Pass(String),
    Fail(String),
    Inconclusive(String),
}

/// The first absolute guardrail the candidate breaches, with its numbers.
fn breach(spec: &RolloutSpec, candidate: &Counts) -> Option<String> {
    spec.guardrails.iter().find_map(|g| {
        let value = g.metric.value(candidate);
        (value > g.max).then(|| {
            format!(
                "guardrail {g} breached: candidate {} {value:.4} over {} requests",
                g.metric.as_str(),
                candidate.requests
            )
        })
    })
}

fn judge(rollout: &Rollout, evidence: &Evidence) -> Judgement {
    let spec = &rollout.spec;
    let (stable, candidate) = (&evidence.stable, &evidence.candidate);
    if evidence.exposed_at.is_none() {
        return Judgement::Inconclusive(format!(
            "the cohort has not acknowledged the candidate ({} of {} connected candidate agents)",
            evidence.candidate_acked, evidence.candidate_agents
        ));
    }
    let two_arms = rollout.weight_bp < FULL_BP;
    let thin = candidate.requests < spec.min_samples
        || (two_arms && evidence.stable_agents > 0 && stable.requests < spec.min_samples);
    if thin {
        return Judgement::Inconclusive(format!(
            "too few requests (candidate {}, stable {}; {} per arm needed)",
            candidate.requests, stable.requests, spec.min_samples
        ));
    }
    if let Some(reason) = breach(spec, candidate) {
        return Judgement::Fail(reason);
    }
    let mut passed = vec![format!("{} candidate requests", candidate.requests)];
    for g in &spec.guardrails {
        let value = g.metric.value(candidate);
        if value.is_nan() {
            return Judgement::Inconclusive(format!("no data for {}", g.metric.as_str()));
        }
        passed.push(format!("{} {value:.4}", g.metric.as_str()));
    }
    if let (Some(delta), true) = (
        spec.max_error_rate_increase,
        two_arms && evidence.stable_agents > 0,
    ) {
        let level = rollout.comparison_level();
        let diff = stats::rate_difference(
            candidate.errors,
            candidate.requests,
            stable.errors,
            stable.requests,
            level,
        );
        let shown = format!(
            "error rate difference {:+.4} ({:.2}% interval {:+.4}..{:+.4}, margin {delta})",
            diff.estimate,
            level * 100.0,
            diff.low,
            diff.high
        );
        if diff.low.is_nan() || diff.high.is_nan() {
            return Judgement::Inconclusive(format!("no error rate to compare: {shown}"));
        }
        if diff.low > delta {
            return Judgement::Fail(format!("candidate worse than stable: {shown}"));
        }
        if diff.high > delta {
            return Judgement::Inconclusive(shown);
        }
        passed.push(shown);
    }
    Judgement::Pass(format!("step passed: {}", passed.join(", ")))
}
