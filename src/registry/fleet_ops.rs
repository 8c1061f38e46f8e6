//! The registry's fleet use cases: acknowledgements and fleet status, over
//! the in-memory [`Fleet`](super::fleet::Fleet).

use super::fleet::{self, Ack, AgentLabelStatus};
use super::{Registry, Result};
use crate::domain::{LabelName, PromptName};

impl Registry {
    /// Records an agent's acknowledgement; answers the label's current target.
    pub fn ack(&self, ack: Ack) -> Result<Option<u64>> {
        self.existing_prompt(&ack.name)?;
        let target = self.label_target(&ack.name, &ack.label)?.map(|t| t.version);
        self.inner.fleet.ack(ack);
        Ok(target)
    }

    /// [`Registry::ack`] from memory, when the label cache has the label's
    /// target (a fleet acknowledging a move): no storage call, so it runs
    /// on the async worker. `None` (nothing recorded) when the store is
    /// needed: call [`Registry::ack`] off the runtime.
    pub fn ack_from_memory(&self, ack: &Ack) -> Option<Option<u64>> {
        let target = self.cached_label_target(&ack.name, &ack.label)?;
        self.inner.fleet.ack(ack.clone());
        Some(Some(target.version))
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
            row.target_version = targets[&key];
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
        Ok(self.inner.fleet.count(name, label, target))
    }

    pub(super) fn expire_agents(&self) {
        let ttl = i64::try_from(self.inner.hub.config().agent_ttl.as_micros()).unwrap_or(i64::MAX);
        self.inner.fleet.expire(crate::time::now_micros(), ttl);
    }
}
