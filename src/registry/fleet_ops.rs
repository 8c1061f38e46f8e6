//! The registry's fleet use cases: acknowledgements and fleet status, over
//! the in-memory [`Fleet`](super::fleet::Fleet).

use super::fleet::{self, Ack, AgentLabelStatus};
use super::{Registry, Result};
use crate::domain::{LabelName, PromptName};

impl Registry {
    /// Records an agent's acknowledgement; answers its target (the
    /// label's, or its arm's during a rollout).
    pub fn ack(&self, ack: Ack) -> Result<Option<u64>> {
        self.existing_prompt(&ack.name)?;
        let target = self.label_target(&ack.name, &ack.label)?.map(|t| t.version);
        let target = self
            .arm_target(&ack.name, &ack.label, &ack.agent_id)
            .or(target);
        self.inner.fleet.ack(ack);
        Ok(target)
    }

    /// The agent's arm's version while a rollout runs on the label.
    fn arm_target(&self, name: &PromptName, label: &LabelName, agent_id: &str) -> Option<u64> {
        let (rollout, arm) = self.agent_arm(name, label, agent_id, None)?;
        Some(rollout.side(arm).version)
    }

    /// An agent's target and arm, given the label's target.
    fn agent_target(
        &self,
        rollout: Option<&crate::domain::rollout::Rollout>,
        hello: &fleet::AgentHello,
        label_target: Option<u64>,
    ) -> (Option<u64>, Option<crate::domain::rollout::Arm>) {
        let Some(rollout) = rollout else {
            return (label_target, None);
        };
        let agent = super::rollout::AgentRef {
            agent_id: &hello.agent_id,
            attributes: &hello.attributes,
        };
        let arm = super::rollout::arm_of(rollout, Some(agent));
        (Some(rollout.side(arm).version), Some(arm))
    }

    /// [`Registry::ack`] from memory, when the label cache has the label's
    /// target (a fleet acknowledging a move): no storage call, so it runs
    /// on the async worker. `None` (nothing recorded) when the store is
    /// needed: call [`Registry::ack`] off the runtime.
    pub fn ack_from_memory(&self, ack: &Ack) -> Option<Option<u64>> {
        let target = self.cached_label_target(&ack.name, &ack.label)?;
        let target = self
            .arm_target(&ack.name, &ack.label, &ack.agent_id)
            .unwrap_or(target.version);
        self.inner.fleet.ack(ack.clone());
        Some(Some(target))
    }

    /// Each known agent's state for the selected labels, with the labels'
    /// current targets.
    pub fn fleet_status(
        &self,
        name: Option<&PromptName>,
        label: Option<&LabelName>,
    ) -> Result<Vec<AgentLabelStatus>> {
        self.expire_agents();
        let store = self.store();
        let known: Vec<(PromptName, LabelName)> = match name {
            Some(name) => store
                .labels(name)?
                .into_iter()
                .map(|t| (name.clone(), t.label))
                .collect(),
            None => store
                .labels_under("")?
                .into_iter()
                .map(|(n, t)| (n, t.label))
                .collect(),
        };
        let mut known = known;
        // A label that is not set (yet) can still be watched.
        if let (Some(name), Some(label)) = (name, label) {
            if !known.iter().any(|(n, l)| n == name && l == label) {
                known.push((name.clone(), label.clone()));
            }
        }
        let mut rows = self.inner.fleet.status(name, label, &known);
        let mut targets = std::collections::HashMap::new();
        for row in &mut rows {
            let key = (row.name.clone(), row.label.clone());
            if !targets.contains_key(&key) {
                targets.insert(
                    key.clone(),
                    store.label(&row.name, &row.label)?.map(|t| t.version),
                );
            }
            let rollout = self.active_rollout(&row.name, &row.label);
            (row.target_version, row.arm) =
                self.agent_target(rollout.as_deref(), &row.hello, targets[&key]);
        }
        Ok(rows)
    }

    /// Counts for one label, without per-agent rows.
    pub fn fleet_summary(
        &self,
        name: &PromptName,
        label: &LabelName,
    ) -> Result<fleet::FleetCounts> {
        self.expire_agents();
        let target = self.existing_label_target(name, label)?.map(|t| t.version);
        let rollout = self.active_rollout(name, label);
        Ok(self.inner.fleet.count(name, label, |hello| {
            self.agent_target(rollout.as_deref(), hello, target).0
        }))
    }

    pub(super) fn expire_agents(&self) {
        let ttl = i64::try_from(self.inner.hub.config().agent_ttl.as_micros()).unwrap_or(i64::MAX);
        self.inner.fleet.expire(crate::time::now_micros(), ttl);
    }
}
