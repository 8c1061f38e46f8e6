//! What an agent's watch sees of rollouts. The hub carries one copy of each
//! revision for everyone; a watch with an agent id turns it into that
//! agent's view at the edge, where it is sent (`WatchStream` for Watch, the
//! watch set per id for WatchMany), so merged watches of different arms
//! still share one watcher:
//!
//! - a rollout move (`MoveKind::Rollout`, or the completing promote) whose
//!   arms before and after are the same for the agent is dropped (its
//!   stream then sends nothing for that revision; progress covers it);
//! - one that changes the agent's arm becomes a promote to the candidate or
//!   a rollback to the stable version, from the version it ran;
//! - a snapshot's label under rollout shows the agent's arm's version.
//!
//! Each rollout move carries the weight agents followed before it, so the
//! translation needs no state of its own: a resume or a catch-up from the
//! log gives each agent exactly its own moves, in order.

use super::{LabelState, SharedRevision, WatchEvent};
use crate::domain::rollout::{Arm, Rollout};
use crate::domain::{Change, LabelMove, MoveKind, Revision};
use crate::registry::rollout::{bucket_of, AgentRef};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The agent a watch is for, as a rollout assigns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchAgent {
    pub agent_id: String,
    pub attributes: BTreeMap<String, String>,
}

impl WatchAgent {
    fn as_ref(&self) -> AgentRef<'_> {
        AgentRef {
            agent_id: &self.agent_id,
            attributes: &self.attributes,
        }
    }

    /// The agent's arm before and after one rollout move.
    fn arms(&self, rollout: &Rollout) -> (Arm, Arm) {
        let bucket = bucket_of(rollout, Some(self.as_ref()));
        (rollout.previous_arm(bucket), rollout.arm(bucket))
    }
}

/// Whether a revision holds a rollout move (the only kind an agent sees
/// differently).
pub fn has_rollout(revision: &Revision) -> bool {
    revision
        .changes
        .iter()
        .any(|c| matches!(c, Change::LabelMoved(mv) if mv.rollout.is_some()))
}

/// Whether a snapshot holds a label under rollout.
fn has_rollout_labels(labels: &[LabelState]) -> bool {
    labels.iter().any(|l| l.rollout.is_some())
}

/// What decides an agent's view of an event: its arm before and after each
/// rollout move (or in each rollout label of a snapshot). Agents with the
/// same signature see the same messages.
pub fn signature(event: &WatchEvent, agent: &WatchAgent) -> Vec<(Arm, Arm)> {
    match event {
        WatchEvent::Changes(revision) => revision
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::LabelMoved(mv) => mv.rollout.as_deref().map(|r| agent.arms(r)),
                Change::VersionPublished { .. } => None,
            })
            .collect(),
        WatchEvent::Snapshot { labels, .. } => labels
            .iter()
            .filter_map(|l| l.rollout.as_deref().map(|r| agent.arms(r)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The agent's view of an event: the event itself when nothing in it
/// depends on the arm, `None` when nothing of it is left to send.
pub fn translate(event: WatchEvent, agent: &WatchAgent) -> Option<WatchEvent> {
    match event {
        WatchEvent::Changes(shared) if has_rollout(&shared) => {
            let revision: &Revision = &shared;
            let changes: Vec<Change> = revision
                .changes
                .iter()
                .filter_map(|c| translate_change(c, agent))
                .collect();
            if changes.is_empty() {
                return None;
            }
            Some(WatchEvent::Changes(Arc::new(SharedRevision::new(
                Arc::new(Revision {
                    revision: revision.revision,
                    time: revision.time,
                    trace_id: revision.trace_id.clone(),
                    changes,
                }),
            ))))
        }
        WatchEvent::Snapshot {
            revision,
            labels,
            complete,
        } if has_rollout_labels(&labels) => Some(WatchEvent::Snapshot {
            revision,
            labels: labels
                .into_iter()
                .map(|l| translate_label(l, agent))
                .collect(),
            complete,
        }),
        other => Some(other),
    }
}

fn translate_change(change: &Change, agent: &WatchAgent) -> Option<Change> {
    let Change::LabelMoved(mv) = change else {
        return Some(change.clone());
    };
    let Some(rollout) = mv.rollout.as_deref() else {
        return Some(change.clone());
    };
    let (before, after) = agent.arms(rollout);
    if before == after {
        return None;
    }
    let (from, to) = (rollout.side(before), rollout.side(after));
    Some(Change::LabelMoved(LabelMove {
        kind: match after {
            Arm::Candidate => MoveKind::Promote,
            Arm::Stable => MoveKind::Rollback,
        },
        from_version: Some(from.version),
        to_version: Some(to.version),
        digest: Some(to.digest),
        ..mv.clone()
    }))
}

fn translate_label(mut state: LabelState, agent: &WatchAgent) -> LabelState {
    if let Some(rollout) = state.rollout.as_deref() {
        let arm = rollout.arm(bucket_of(rollout, Some(agent.as_ref())));
        let side = rollout.side(arm);
        state.target.version = side.version;
        state.target.digest = side.digest;
        state.arm = Some(arm);
    }
    state
}
