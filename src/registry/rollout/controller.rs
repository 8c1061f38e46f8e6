//! The rollout controller: every `--rollout-eval-interval` it measures each
//! running rollout's evidence, asks `domain::rollout::evaluate` what it
//! decides, and commits the decision as a revision with actor `guardrail`
//! and the rule and numbers as its reason. A decision is taken against the
//! rollout as it was measured: if a person changed it meanwhile (under the
//! writer lock the controller re-reads it), the decision is dropped and the
//! next evaluation starts over.

use super::{MoveRequest, Registry};
use crate::domain::release::Gate;
use crate::domain::rollout::{Arm, Rollout, RolloutState, Transition, Verdict};
use crate::domain::MoveKind;
use crate::registry::{Inner, RegistryError, Result};
use crate::telemetry::metrics as telemetry;
use std::sync::Weak;

/// The actor of every decision the controller takes.
pub const GUARDRAIL: &str = "guardrail";

/// Runs the controller until the registry is gone.
pub(in crate::registry) async fn run_controller(registry: Weak<Inner>) {
    let interval = match registry.upgrade() {
        Some(inner) => inner.rollout_eval_interval,
        None => return,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        Registry { inner }.evaluate_rollouts().await;
    }
}

impl Registry {
    /// One evaluation of every running rollout.
    pub(in crate::registry) async fn evaluate_rollouts(&self) {
        for rollout in self.active_rollouts() {
            let now = crate::time::now_micros();
            let evidence = self.evidence(&rollout, now);
            publish_gauges(&rollout, &evidence);
            let verdict = crate::domain::rollout::evaluate(&rollout, &evidence, now);
            let (transition, reason) = match verdict {
                Verdict::Hold => continue,
                Verdict::Advance { reason } => (Transition::Advance, reason),
                Verdict::Extend { reason } => (Transition::Extend, reason),
                Verdict::Pause { reason } => (Transition::Pause, reason),
                Verdict::Abort { reason } => (Transition::Abort, reason),
            };
            match self.decide(&rollout, transition, reason.clone()).await {
                Ok(Some(next)) => {
                    let decision = decision_name(transition, &next);
                    metrics::counter!(telemetry::ROLLOUT_DECISIONS, "decision" => decision, "actor" => GUARDRAIL)
                        .increment(1);
                    tracing::info!(
                        rollout = rollout.id,
                        prompt = %rollout.name,
                        label = %rollout.label,
                        decision,
                        weight_bp = next.weight_bp,
                        %reason,
                        "rollout decision"
                    );
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(
                    rollout = rollout.id,
                    prompt = %rollout.name,
                    label = %rollout.label,
                    %error,
                    "rollout decision not taken; retried at the next evaluation"
                ),
            }
        }
    }

    /// Commits one decision, if the rollout is still as measured. An
    /// advance waits while the gate refuses the candidate now (a freeze, a
    /// required check that fails since); an abort never waits.
    async fn decide(
        &self,
        measured: &Rollout,
        transition: Transition,
        reason: String,
    ) -> Result<Option<Rollout>> {
        let measured = measured.clone();
        let decided = self
            .write(move |this| {
                let mut writer = this.lock_writer();
                let (name, label) = (measured.name.clone(), measured.label.clone());
                let Some(current) = this.store().rollout(&name, &label)? else {
                    return Ok(None);
                };
                if current != measured {
                    return Ok(None);
                }
                if transition == Transition::Advance {
                    let (gate, _) = this.gate_move(
                        &name,
                        &label,
                        MoveKind::Promote,
                        Some(current.candidate.version),
                        true,
                    )?;
                    if let Gate::Refuse(why) = gate {
                        tracing::info!(
                            rollout = current.id,
                            why = %why.describe(&name, &label, crate::time::format_micros),
                            "rollout holds: the release gate refuses the candidate now"
                        );
                        return Ok(None);
                    }
                }
                let (_, time) = writer.next();
                let next = current
                    .after(transition, time)
                    .map_err(RegistryError::FailedPrecondition)?;
                let request = MoveRequest {
                    name,
                    label,
                    actor: GUARDRAIL.to_string(),
                    reason,
                    trace_id: None,
                };
                let revision = this.commit_rollout(&mut writer, request, next.clone(), None)?;
                Ok(Some((next, revision)))
            })
            .await?;
        let Some((next, revision)) = decided else {
            return Ok(None);
        };
        self.wait_durable(revision).await?;
        publish_state(&next);
        Ok(Some(next))
    }
}

/// What a transition is called in metrics and logs.
pub fn decision_name(transition: Transition, next: &Rollout) -> &'static str {
    match transition {
        Transition::Advance | Transition::Promote if next.state == RolloutState::Completed => {
            "complete"
        }
        Transition::Advance => "advance",
        Transition::Promote => "complete",
        Transition::Extend => "extend",
        Transition::Pause => "pause",
        Transition::Resume => "resume",
        Transition::Abort => "abort",
    }
}

/// The state and weight gauges of a rollout.
pub(super) fn publish_state(rollout: &Rollout) {
    let (prompt, label) = (rollout.name.to_string(), rollout.label.to_string());
    let weight = if rollout.state.is_active() {
        rollout.weight_bp
    } else {
        0
    };
    metrics::gauge!(telemetry::ROLLOUT_WEIGHT, "prompt" => prompt.clone(), "label" => label.clone())
        .set(f64::from(weight));
    for state in [
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Aborted,
        RolloutState::Completed,
    ] {
        let on = if state == rollout.state { 1.0 } else { 0.0 };
        metrics::gauge!(telemetry::ROLLOUT_STATE, "prompt" => prompt.clone(), "label" => label.clone(), "state" => state.as_str())
            .set(on);
    }
}

fn publish_gauges(rollout: &Rollout, evidence: &crate::domain::rollout::Evidence) {
    publish_state(rollout);
    let (prompt, label) = (rollout.name.to_string(), rollout.label.to_string());
    for (arm, counts) in [
        (Arm::Stable, &evidence.stable),
        (Arm::Candidate, &evidence.candidate),
    ] {
        metrics::gauge!(telemetry::ROLLOUT_ERROR_RATE, "prompt" => prompt.clone(), "label" => label.clone(), "arm" => arm.as_str())
            .set(counts.rate(counts.errors));
        metrics::gauge!(telemetry::ROLLOUT_REQUESTS, "prompt" => prompt.clone(), "label" => label.clone(), "arm" => arm.as_str())
            .set(counts.requests as f64);
    }
}
