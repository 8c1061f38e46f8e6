//! Progressive rollouts: starting one (through the release gate), the
//! verbs on it, the table of active rollouts that resolves, watches and the
//! fleet view read, and each agent's arm. Every change of a rollout is one
//! revision, a label move carrying the rollout as it stands after it
//! (`MoveKind::Rollout`, or the completing promote), committed through the
//! one label-move commit; the store writes the rollout record in its batch.
//! Outcome counts are in `outcomes.rs`, the decisions in `controller.rs`.

mod controller;
mod outcomes;

pub(in crate::registry) use controller::run_controller;
pub use controller::GUARDRAIL;
pub use outcomes::{ArmFigures, OutcomeReport, RolloutReport};

use super::write::{Approved, MoveRequest, MoveStep};
use super::{Registry, RegistryError, Result, WriterState};
use crate::domain::release::{Gate, PromotionRequest};
use crate::domain::rollout::{Arm, Rollout, RolloutSpec, RolloutState, Side, Transition};
use crate::domain::{Change, Clearance, LabelName, MoveKind, PromptName, Revision};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

type Key = (PromptName, LabelName);

/// The running and paused rollouts, as of the newest commit, and their
/// in-memory evidence.
#[derive(Default)]
pub(in crate::registry) struct Rollouts {
    active: RwLock<HashMap<Key, Arc<Rollout>>>,
    /// `active.len()`, read without the lock on the resolve path.
    count: AtomicUsize,
    evidence: Mutex<HashMap<Key, outcomes::Book>>,
}

impl Rollouts {
    /// The active rollout of a label.
    pub fn get(&self, name: &PromptName, label: &LabelName) -> Option<Arc<Rollout>> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let active = self.active.read().unwrap_or_else(|p| p.into_inner());
        active.get(&(name.clone(), label.clone())).cloned()
    }

    fn all(&self) -> Vec<Arc<Rollout>> {
        let active = self.active.read().unwrap_or_else(|p| p.into_inner());
        active.values().cloned().collect()
    }

    /// Takes in the rollouts a committed revision changed.
    pub fn apply(&self, revision: &Revision) {
        for change in &revision.changes {
            let Change::LabelMoved(mv) = change else {
                continue;
            };
            let Some(rollout) = &mv.rollout else {
                continue;
            };
            self.put((**rollout).clone());
        }
    }

    /// Takes in the rollouts found at start-up.
    pub fn prime(&self, rollouts: Vec<Rollout>) {
        for rollout in rollouts {
            self.put(rollout);
        }
    }

    fn put(&self, rollout: Rollout) {
        let key = (rollout.name.clone(), rollout.label.clone());
        let mut active = self.active.write().unwrap_or_else(|p| p.into_inner());
        if rollout.state.is_active() {
            active.insert(key, Arc::new(rollout));
        } else {
            active.remove(&key);
            self.evidence
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
        self.count.store(active.len(), Ordering::Relaxed);
    }
}

/// What a rollout call did.
#[derive(Debug, Clone)]
pub struct RolloutChanged {
    /// The rollout after it (`None` when a promotion request was made).
    pub rollout: Option<Rollout>,
    pub revision: u64,
    /// Set on a protected label: the request whose approval starts it.
    pub request: Option<PromotionRequest>,
}

/// An agent, as a rollout assigns it.
#[derive(Debug, Clone, Copy)]
pub struct AgentRef<'a> {
    pub agent_id: &'a str,
    pub attributes: &'a BTreeMap<String, String>,
}

/// The arm of an agent (its bucket under the rollout's salt).
pub fn arm_of(rollout: &Rollout, agent: Option<AgentRef<'_>>) -> Arm {
    rollout.arm(bucket_of(rollout, agent))
}

/// The agent's bucket, `None` without an agent or its sticky attribute.
pub fn bucket_of(rollout: &Rollout, agent: Option<AgentRef<'_>>) -> Option<u32> {
    let agent = agent?;
    rollout
        .key(agent.agent_id, agent.attributes)
        .map(|key| rollout.bucket(key))
}

impl Registry {
    /// The running or paused rollout of a label, from memory.
    pub fn active_rollout(&self, name: &PromptName, label: &LabelName) -> Option<Arc<Rollout>> {
        self.inner.rollouts.get(name, label)
    }

    /// The rollout of a label and the agent's arm in it, when one runs;
    /// without `attributes`, those of the agent's watch.
    pub fn agent_arm(
        &self,
        name: &PromptName,
        label: &LabelName,
        agent_id: &str,
        attributes: Option<&BTreeMap<String, String>>,
    ) -> Option<(Arc<Rollout>, Arm)> {
        let rollout = self.active_rollout(name, label)?;
        let known;
        let attributes = match attributes {
            Some(given) if !given.is_empty() || rollout.spec.sticky_by.is_none() => given,
            _ => {
                known = self.inner.fleet.attributes(agent_id).unwrap_or_default();
                &known
            }
        };
        let arm = arm_of(
            &rollout,
            Some(AgentRef {
                agent_id,
                attributes,
            }),
        );
        Some((rollout, arm))
    }

    /// Starts a rollout of `request.label` to `candidate`: through the
    /// release gate as a promote (checks on the candidate, freezes; a
    /// protected label gets a promotion request that starts it once
    /// approved). Answers once durable.
    pub async fn start_rollout(
        &self,
        request: MoveRequest,
        candidate: u64,
        spec: RolloutSpec,
    ) -> Result<RolloutChanged> {
        self.check_actor_reason(&request)?;
        let spec = spec.validate(random_salt)?;
        let changed = self
            .write(move |this| {
                let mut writer = this.lock_writer();
                let (name, label) = (request.name.clone(), request.label.clone());
                let current = this.existing_label_target(&name, &label)?.ok_or_else(|| {
                    RegistryError::FailedPrecondition(format!(
                        "label {label} of {name} is not set: promote a first version, then roll out the next"
                    ))
                })?;
                if let Some(running) = this.store().rollout(&name, &label)?.filter(|r| r.state.is_active()) {
                    return Err(RegistryError::FailedPrecondition(format!(
                        "rollout {} of {name} {label} is {}: abort or finish it before starting another",
                        running.id,
                        running.state.as_str()
                    )));
                }
                if current.version == candidate {
                    return Err(RegistryError::FailedPrecondition(format!(
                        "label {label} of {name} already points to version {candidate}: nothing to roll out"
                    )));
                }
                let digest = this
                    .movable_target(&request, MoveKind::Promote, Some(candidate))?
                    .unwrap_or(current.digest);
                let (gate, policy) =
                    this.gate_move(&name, &label, MoveKind::Promote, Some(candidate), false)?;
                match gate {
                    Gate::Allow | Gate::Emergency => {}
                    Gate::Refuse(why) => {
                        return Err(RegistryError::FailedPrecondition(why.describe(
                            &name,
                            &label,
                            crate::time::format_micros,
                        )))
                    }
                    Gate::Request { approvals } => {
                        let ttl = policy.as_ref().and_then(|p| p.request_ttl_secs);
                        let opened = this.open_request(
                            &writer,
                            request,
                            MoveKind::Rollout,
                            (candidate, digest),
                            Some(current.version),
                            approvals,
                            ttl,
                            Some(spec),
                        )?;
                        return Ok(RolloutChanged {
                            rollout: None,
                            revision: writer.head,
                            request: Some(opened),
                        });
                    }
                }
                let stable = Side {
                    version: current.version,
                    digest: current.digest,
                };
                let candidate = Side {
                    version: candidate,
                    digest,
                };
                let (rollout, revision) =
                    this.begin_rollout(&mut writer, request, stable, candidate, spec, None)?;
                Ok(RolloutChanged {
                    rollout: Some(rollout),
                    revision,
                    request: None,
                })
            })
            .await?;
        if changed.request.is_some() {
            self.store().flush().await?;
        } else {
            self.wait_durable(changed.revision).await?;
        }
        Ok(changed)
    }

    /// Commits a rollout's start, under the writer lock; with `approved`,
    /// the promotion request it completes is written in the same batch.
    pub(in crate::registry) fn begin_rollout(
        &self,
        writer: &mut WriterState,
        request: MoveRequest,
        stable: Side,
        candidate: Side,
        spec: RolloutSpec,
        approved: Option<Approved<'_>>,
    ) -> Result<(Rollout, u64)> {
        let (_, time) = writer.next();
        let rollout = Rollout {
            id: self.store().next_rollout_id()?,
            name: request.name.clone(),
            label: request.label.clone(),
            stable,
            candidate,
            state: RolloutState::Running,
            step: 0,
            weight_bp: spec.steps_bp[0],
            previous_weight_bp: 0,
            spec,
            extensions: 0,
            step_started: time,
            started_by: request.actor.clone(),
            started_at: time,
            request_id: approved.as_ref().map(|a| a.request.id),
        };
        let revision = self.commit_rollout(writer, request, rollout.clone(), approved)?;
        Ok((rollout, revision))
    }

    /// A verb on the label's rollout by hand: pause, resume, abort,
    /// advance or promote. Answers once durable.
    pub async fn control_rollout(
        &self,
        request: MoveRequest,
        transition: Transition,
    ) -> Result<RolloutChanged> {
        self.check_actor_reason(&request)?;
        let changed = self
            .write(move |this| {
                let mut writer = this.lock_writer();
                let (name, label) = (request.name.clone(), request.label.clone());
                this.existing_prompt(&name)?;
                let current = this.store().rollout(&name, &label)?.ok_or_else(|| {
                    RegistryError::NotFound(format!("no rollout of {name} {label} exists"))
                })?;
                if matches!(transition, Transition::Advance | Transition::Promote)
                    && current.state.is_active()
                {
                    // More agents on the candidate: the gate the start passed
                    // must still hold (a freeze since, a check failing since);
                    // the approvals were given at the start.
                    let (gate, _) = this.gate_move(
                        &name,
                        &label,
                        MoveKind::Promote,
                        Some(current.candidate.version),
                        true,
                    )?;
                    if let Gate::Refuse(why) = gate {
                        return Err(RegistryError::FailedPrecondition(why.describe(
                            &name,
                            &label,
                            crate::time::format_micros,
                        )));
                    }
                }
                let (_, time) = writer.next();
                let next = current
                    .after(transition, time)
                    .map_err(RegistryError::FailedPrecondition)?;
                let revision = this.commit_rollout(&mut writer, request, next.clone(), None)?;
                Ok(RolloutChanged {
                    rollout: Some(next),
                    revision,
                    request: None,
                })
            })
            .await?;
        self.wait_durable(changed.revision).await?;
        if let Some(next) = &changed.rollout {
            let decision = controller::decision_name(transition, next);
            metrics::counter!(crate::telemetry::metrics::ROLLOUT_DECISIONS, "decision" => decision, "actor" => "operator")
                .increment(1);
            controller::publish_state(next);
        }
        Ok(changed)
    }

    /// Commits one change of a rollout as a label move: a completion moves
    /// the label to the candidate (a promote); everything else keeps it on
    /// the stable version (`MoveKind::Rollout`).
    pub(in crate::registry) fn commit_rollout(
        &self,
        writer: &mut WriterState,
        request: MoveRequest,
        rollout: Rollout,
        approved: Option<Approved<'_>>,
    ) -> Result<u64> {
        let completed = rollout.state == RolloutState::Completed;
        let target = if completed {
            rollout.candidate
        } else {
            rollout.stable
        };
        let clearance = match &approved {
            Some(a) => Clearance {
                request: Some(a.request.id),
                approvers: a
                    .request
                    .approvals
                    .iter()
                    .map(|x| x.approver.clone())
                    .collect(),
                emergency: false,
            },
            None => Clearance::default(),
        };
        let step = MoveStep {
            kind: if completed {
                MoveKind::Promote
            } else {
                MoveKind::Rollout
            },
            from_version: Some(rollout.stable.version),
            to_version: Some(target.version),
            digest: Some(target.digest),
            clearance,
            rollout: Some(Box::new(rollout)),
        };
        self.commit_move(writer, request, step, approved)
    }

    /// Aborts the label's active rollout as part of an emergency rollback,
    /// under the writer lock: every agent back on the stable version.
    pub(in crate::registry) fn abort_for_rollback(
        &self,
        writer: &mut WriterState,
        request: MoveRequest,
        rollout: &Rollout,
    ) -> Result<u64> {
        let (_, time) = writer.next();
        let next = rollout
            .after(Transition::Abort, time)
            .map_err(RegistryError::FailedPrecondition)?;
        self.commit_rollout(writer, request, next, None)
    }
}

/// 16 random hex digits.
fn random_salt() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // The system RNG does not fail on Linux; a fixed salt would only make
    // the first agents the same ones every time.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    hex::encode(bytes)
}
