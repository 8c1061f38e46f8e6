//! Fleet status: which agent runs which version, from their Watch streams
//! and acknowledgements (the xDS idea: clients say what they applied).
//!
//! Kept in memory: after a restart agents reconnect and acknowledge what they
//! run, and the view rebuilds itself. Agents without a stream for longer than
//! the configured TTL are forgotten.

pub use crate::domain::FleetCounts;
use crate::domain::{in_sync, AgentState, ContentDigest, LabelName, Micros, PromptName, Selector};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// What an agent says about itself when it opens a watch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentHello {
    pub agent_id: String,
    pub host: String,
    pub sdk: String,
    pub version: String,
    /// What a rollout may assign the agent by (`sticky_by`).
    pub attributes: BTreeMap<String, String>,
}

/// What an agent did with a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied,
    Rejected { reason: String },
}

/// One acknowledgement.
#[derive(Debug, Clone)]
pub struct Ack {
    pub agent_id: String,
    pub name: PromptName,
    pub label: LabelName,
    pub version: u64,
    pub digest: ContentDigest,
    pub revision: u64,
    pub outcome: ApplyOutcome,
}

/// One agent's state for one label.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentLabelStatus {
    pub hello: AgentHello,
    pub name: PromptName,
    pub label: LabelName,
    pub connected: bool,
    pub last_seen: Micros,
    /// The version last reported applied, with its digest.
    pub applied: Option<(u64, ContentDigest)>,
    /// The version last rejected, when the newest report was a rejection.
    pub rejected: Option<(u64, String)>,
    /// Filled in by the registry: the agent's target (the label's, or its
    /// arm's during a rollout).
    pub target_version: Option<u64>,
    /// Filled in by the registry: the agent's arm during a rollout.
    pub arm: Option<crate::domain::rollout::Arm>,
}

impl AgentLabelStatus {
    pub fn in_sync(&self) -> bool {
        in_sync(self.applied.as_ref().map(|(v, _)| *v), self.target_version)
    }

    pub fn state(&self) -> AgentState {
        AgentState::of(self.connected, self.in_sync())
    }
}

#[derive(Debug, Default)]
struct Agent {
    hello: AgentHello,
    streams: usize,
    last_seen: Micros,
    /// Selectors of the agent's streams (open ones, or the last one).
    selectors: Vec<Selector>,
    /// Per (prompt, label): what it applied last.
    applied: BTreeMap<(PromptName, LabelName), Applied>,
}

#[derive(Debug, Clone)]
struct Applied {
    version: Option<(u64, ContentDigest)>,
    rejected: Option<(u64, String)>,
}

/// The fleet view. Cheap operations under one std mutex, never held across
/// an await.
#[derive(Debug, Default)]
pub struct Fleet {
    agents: Mutex<HashMap<String, Agent>>,
}

/// Marks the agent disconnected (if it has no other stream) when dropped.
pub struct Connection {
    fleet: Arc<Fleet>,
    agent_id: String,
    selector: Selector,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut agents = self.fleet.lock();
        if let Some(agent) = agents.get_mut(&self.agent_id) {
            agent.streams = agent.streams.saturating_sub(1);
            agent.last_seen = crate::time::now_micros();
            // Keep the last selector of a disconnected agent, so it still
            // shows up (as disconnected) for the labels it was watching.
            if agent.streams > 0 || agent.selectors.len() > 1 {
                if let Some(i) = agent.selectors.iter().position(|s| *s == self.selector) {
                    agent.selectors.remove(i);
                }
            }
        }
    }
}

impl Fleet {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Agent>> {
        self.agents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records an open watch stream of an agent.
    pub fn connect(self: &Arc<Self>, hello: AgentHello, selector: Selector) -> Connection {
        let mut agents = self.lock();
        let agent = agents.entry(hello.agent_id.clone()).or_default();
        if agent.streams == 0 {
            agent.selectors.clear();
        }
        agent.streams += 1;
        agent.last_seen = crate::time::now_micros();
        agent.selectors.push(selector.clone());
        let agent_id = hello.agent_id.clone();
        agent.hello = hello;
        Connection {
            fleet: self.clone(),
            agent_id,
            selector,
        }
    }

    pub fn ack(&self, ack: Ack) {
        let mut agents = self.lock();
        let agent = agents.entry(ack.agent_id.clone()).or_insert_with(|| Agent {
            hello: AgentHello {
                agent_id: ack.agent_id.clone(),
                ..AgentHello::default()
            },
            ..Agent::default()
        });
        agent.last_seen = crate::time::now_micros();
        let entry = agent
            .applied
            .entry((ack.name, ack.label))
            .or_insert(Applied {
                version: None,
                rejected: None,
            });
        match ack.outcome {
            ApplyOutcome::Applied => {
                entry.version = Some((ack.version, ack.digest));
                entry.rejected = None;
            }
            ApplyOutcome::Rejected { reason } => entry.rejected = Some((ack.version, reason)),
        }
    }

    /// Forgets agents without a stream for longer than `ttl_micros`.
    pub fn expire(&self, now: Micros, ttl_micros: i64) {
        self.lock().retain(|_, agent| {
            agent.streams > 0 || now.saturating_sub(agent.last_seen) <= ttl_micros
        });
    }

    /// What the agent declared about itself on its newest watch.
    pub fn attributes(&self, agent_id: &str) -> Option<BTreeMap<String, String>> {
        self.lock()
            .get(agent_id)
            .map(|a| a.hello.attributes.clone())
    }

    /// Hands every connected agent that follows `name`'s `label` to
    /// `visit` with the version it last applied there, under the lock and
    /// without copying: the rollout controller counts 10,000 agents this
    /// way on every evaluation, and acknowledgements wait on this lock.
    pub fn for_each_follower(
        &self,
        name: &PromptName,
        label: &LabelName,
        mut visit: impl FnMut(&AgentHello, Option<u64>),
    ) {
        let key = (name.clone(), label.clone());
        for agent in self.lock().values() {
            if agent.streams > 0 && agent.selectors.iter().any(|s| s.matches_label(name, label)) {
                let applied = agent.applied.get(&key).and_then(|a| a.version.as_ref());
                visit(&agent.hello, applied.map(|(v, _)| *v));
            }
        }
    }

    /// Counts agents in sync, stale and disconnected for one label, each
    /// against its own target (`target` of the agent), without building
    /// rows: the cheap path that `promote --wait` polls.
    pub fn count(
        &self,
        name: &PromptName,
        label: &LabelName,
        target: impl Fn(&AgentHello) -> Option<u64>,
    ) -> FleetCounts {
        let key = (name.clone(), label.clone());
        self.lock()
            .values()
            .filter_map(|agent| {
                let applied = agent.applied.get(&key);
                if applied.is_none()
                    && !agent.selectors.iter().any(|s| s.matches_label(name, label))
                {
                    return None;
                }
                let applied = applied.and_then(|a| a.version.as_ref()).map(|(v, _)| *v);
                Some(AgentState::of(
                    agent.streams > 0,
                    in_sync(applied, target(&agent.hello)),
                ))
            })
            .collect()
    }

    /// Rows for every (agent, prompt, label) matching the filter: labels the
    /// agent acknowledged, and labels in `known_labels` its selectors match.
    /// `target_version` is left for the caller to fill.
    pub fn status(
        &self,
        name: Option<&PromptName>,
        label: Option<&LabelName>,
        known_labels: &[(PromptName, LabelName)],
    ) -> Vec<AgentLabelStatus> {
        let agents = self.lock();
        let mut rows = BTreeMap::new();
        for agent in agents.values() {
            let row = |n: &PromptName, l: &LabelName, applied: Option<&Applied>| AgentLabelStatus {
                hello: agent.hello.clone(),
                name: n.clone(),
                label: l.clone(),
                connected: agent.streams > 0,
                last_seen: agent.last_seen,
                applied: applied.and_then(|a| a.version),
                rejected: applied.and_then(|a| a.rejected.clone()),
                target_version: None,
                arm: None,
            };
            let wanted = |n: &PromptName, l: &LabelName| {
                name.is_none_or(|x| x == n) && label.is_none_or(|x| x == l)
            };
            for ((n, l), applied) in &agent.applied {
                if wanted(n, l) {
                    rows.insert(
                        (n.clone(), l.clone(), agent.hello.agent_id.clone()),
                        row(n, l, Some(applied)),
                    );
                }
            }
            for (n, l) in known_labels {
                if wanted(n, l) && agent.selectors.iter().any(|s| s.matches_label(n, l)) {
                    rows.entry((n.clone(), l.clone(), agent.hello.agent_id.clone()))
                        .or_insert_with(|| row(n, l, None));
                }
            }
        }
        rows.into_values().collect()
    }
}
