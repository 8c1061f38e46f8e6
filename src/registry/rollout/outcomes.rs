//! Outcome reports and the evidence a rollout is judged on. Reports are
//! summed in memory per arm for the current step (its id, step and start
//! key the book, so a step, a resume or a new rollout starts from zero);
//! nothing of it is written to disk: after a restart a step's counts start
//! again, and so does its exposure (agents acknowledge again when they
//! reconnect), so a restart can delay a decision but never pass one.

use super::{arm_of, AgentRef, Key, Registry};
use crate::domain::rollout::{Arm, Counts, Evidence, Rollout};
use crate::domain::{LabelMove, LabelName, Micros, PromptName};
use crate::registry::{RegistryError, Result};
use std::sync::Arc;

/// One agent's counts for one window.
#[derive(Debug, Clone)]
pub struct OutcomeReport {
    pub agent_id: String,
    pub name: PromptName,
    pub label: LabelName,
    pub version: u64,
    pub counts: Counts,
}

/// One step's evidence, in memory.
#[derive(Debug, Default)]
pub(super) struct Book {
    /// (rollout id, step, step start): a book belongs to one step.
    of: (u64, u32, Micros),
    stable: Counts,
    candidate: Counts,
    unassigned: u64,
    exposed_at: Option<Micros>,
}

impl Book {
    fn of(rollout: &Rollout) -> (u64, u32, Micros) {
        (rollout.id, rollout.step, rollout.step_started)
    }
}

/// One arm's figures, for the status.
#[derive(Debug, Clone)]
pub struct ArmFigures {
    pub arm: Arm,
    pub version: u64,
    pub agents_assigned: u32,
    pub agents_acknowledged: u32,
    pub counts: Counts,
}

/// What `GetRollout` answers.
#[derive(Debug, Clone)]
pub struct RolloutReport {
    pub rollout: Rollout,
    /// Stable first; empty once the rollout has ended.
    pub arms: Vec<ArmFigures>,
    pub unassigned_reports: u64,
    pub exposed_at: Option<Micros>,
    pub decision_due: Option<Micros>,
    /// The rollout's moves, newest first.
    pub log: Vec<LabelMove>,
}

/// Most entries of a status's decision log.
const LOG_LIMIT: usize = 200;

impl Registry {
    /// Counts a report for the label's active rollout: in the arm the agent
    /// is assigned when it reports that arm's version, apart otherwise.
    /// Answers the rollout's id (0: none is active, the report is dropped)
    /// and the arm it was counted in. No storage call: it runs on the
    /// async worker (the caller checks the prompt exists when it is 0).
    pub fn report_outcome(&self, report: OutcomeReport) -> Result<(u64, Option<Arm>)> {
        crate::domain::rollout::check_counts(&report.counts)?;
        let Some((rollout, arm)) =
            self.agent_arm(&report.name, &report.label, &report.agent_id, None)
        else {
            return Ok((0, None));
        };
        let counted = (rollout.side(arm).version == report.version).then_some(arm);
        self.with_book(&rollout, |book| match counted {
            Some(Arm::Stable) => book.stable.add(&report.counts),
            Some(Arm::Candidate) => book.candidate.add(&report.counts),
            None => book.unassigned += 1,
        });
        metrics::counter!(
            crate::telemetry::metrics::ROLLOUT_REPORTS,
            "arm" => counted.map_or("unassigned", Arm::as_str)
        )
        .increment(1);
        Ok((rollout.id, counted))
    }

    fn with_book<T>(&self, rollout: &Rollout, f: impl FnOnce(&mut Book) -> T) -> T {
        let key: Key = (rollout.name.clone(), rollout.label.clone());
        let mut books = self
            .inner
            .rollouts
            .evidence
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let book = books.entry(key).or_default();
        if book.of != Book::of(rollout) {
            *book = Book {
                of: Book::of(rollout),
                ..Book::default()
            };
        }
        f(book)
    }

    /// The agents following the label by arm: (assigned, acknowledged) for
    /// stable and candidate, connected agents only.
    fn cohorts(&self, rollout: &Rollout) -> [(u32, u32); 2] {
        let mut out = [(0, 0); 2];
        let versions = [Arm::Stable, Arm::Candidate].map(|arm| rollout.side(arm).version);
        let fleet = &self.inner.fleet;
        fleet.for_each_follower(&rollout.name, &rollout.label, |hello, applied| {
            let arm = arm_of(
                rollout,
                Some(AgentRef {
                    agent_id: &hello.agent_id,
                    attributes: &hello.attributes,
                }),
            );
            let slot = &mut out[arm as usize];
            slot.0 += 1;
            if applied == Some(versions[arm as usize]) {
                slot.1 += 1;
            }
        });
        out
    }

    /// The step's evidence now; marks the cohort exposed the first time
    /// every connected candidate agent has acknowledged the candidate.
    pub(super) fn evidence(&self, rollout: &Rollout, now: Micros) -> Evidence {
        let [(stable_agents, _), (candidate_agents, candidate_acked)] = self.cohorts(rollout);
        self.with_book(rollout, |book| {
            if book.exposed_at.is_none()
                && candidate_agents > 0
                && candidate_acked == candidate_agents
            {
                book.exposed_at = Some(now);
            }
            Evidence {
                stable: book.stable.clone(),
                candidate: book.candidate.clone(),
                candidate_agents,
                candidate_acked,
                stable_agents,
                exposed_at: book.exposed_at,
            }
        })
    }

    /// The label's newest rollout with its figures and decision log.
    pub fn rollout_status(&self, name: &PromptName, label: &LabelName) -> Result<RolloutReport> {
        self.existing_prompt(name)?;
        let store = self.store();
        let rollout = store.rollout(name, label)?.ok_or_else(|| {
            RegistryError::NotFound(format!("no rollout of {name} {label} exists"))
        })?;
        let log: Vec<LabelMove> = store
            .history(name, label, None, usize::MAX)?
            .into_iter()
            .filter(|m| m.rollout.as_ref().is_some_and(|r| r.id == rollout.id))
            .take(LOG_LIMIT)
            .collect();
        if !rollout.state.is_active() {
            return Ok(RolloutReport {
                rollout,
                arms: Vec::new(),
                unassigned_reports: 0,
                exposed_at: None,
                decision_due: None,
                log,
            });
        }
        let cohorts = self.cohorts(&rollout);
        let evidence = self.evidence(&rollout, crate::time::now_micros());
        let unassigned = self.with_book(&rollout, |book| book.unassigned);
        let arms = [Arm::Stable, Arm::Candidate]
            .into_iter()
            .map(|arm| ArmFigures {
                arm,
                version: rollout.side(arm).version,
                agents_assigned: cohorts[arm as usize].0,
                agents_acknowledged: cohorts[arm as usize].1,
                counts: match arm {
                    Arm::Stable => evidence.stable.clone(),
                    Arm::Candidate => evidence.candidate.clone(),
                },
            })
            .collect();
        let running = rollout.state == crate::domain::rollout::RolloutState::Running;
        Ok(RolloutReport {
            decision_due: running.then(|| rollout.decision_due(evidence.exposed_at)),
            exposed_at: evidence.exposed_at,
            arms,
            unassigned_reports: unassigned,
            log,
            rollout,
        })
    }

    /// NOT_FOUND unless the prompt exists (a storage read).
    pub fn check_prompt(&self, name: &PromptName) -> Result<()> {
        self.existing_prompt(name).map(|_| ())
    }

    /// Every active rollout, for the controller.
    pub(super) fn active_rollouts(&self) -> Vec<Arc<Rollout>> {
        self.inner.rollouts.all()
    }
}
