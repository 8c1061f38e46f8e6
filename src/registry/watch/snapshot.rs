//! The snapshot a watch from revision 0 starts with: every selected label,
//! consistent at one revision, sent once that revision is durable.

use super::LabelState;
use crate::domain::rollout::Rollout;
use crate::domain::{LabelName, PromptName, Selector};
use crate::registry::{Registry, Result};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a watch from revision 0 starts with.
#[derive(Debug)]
pub struct Snapshot {
    /// The change log is compacted up to here (read before the scan).
    pub compact_revision: u64,
    /// The revision the labels are at.
    pub revision: u64,
    pub labels: Vec<LabelState>,
}

impl Registry {
    /// The current target of every selected label, consistent at one
    /// revision, once that revision is durable.
    pub async fn snapshot(&self, selector: &Selector) -> Result<Snapshot> {
        // On a blocking thread, like every storage call: a scan of a big
        // store, or a stuck one, must not hold an async worker. One call
        // for both reads: a storm of watches queues one blocking task each
        // (behind --max-snapshots), not two.
        let selector = selector.clone();
        let snapshot = self
            .off_runtime(move |registry| {
                let compact_revision = registry.store().compact_revision()?;
                let (revision, labels) = registry.scan_consistent(&selector)?;
                Ok(Snapshot {
                    compact_revision,
                    revision,
                    labels,
                })
            })
            .await;
        self.inner.hub.heap.touch();
        let snapshot = snapshot?;
        self.wait_durable(snapshot.revision).await?;
        Ok(snapshot)
    }

    /// The selected labels at one revision. Writers never wait for readers:
    /// read the head, scan, read the head again; equal heads mean no
    /// revision was committed in between. Under a steady stream of writes,
    /// fall back to scanning under the writer lock so that the snapshot
    /// always finishes.
    fn scan_consistent(&self, selector: &Selector) -> Result<(u64, Vec<LabelState>)> {
        for _ in 0..5 {
            let before = self.committed_head();
            let labels = self.scan_labels(selector)?;
            if self.committed_head() == before {
                return Ok((before, labels));
            }
        }
        let writer = self.lock_writer();
        let labels = self.scan_labels(selector)?;
        Ok((writer.head, labels))
    }

    fn scan_labels(&self, selector: &Selector) -> Result<Vec<LabelState>> {
        let store = self.store();
        // Rollout records change in the same batches as the labels, so
        // they are read inside the same bracket.
        let rollouts: BTreeMap<(PromptName, LabelName), Arc<Rollout>> = store
            .rollouts()?
            .into_iter()
            .filter(|r| r.state.is_active())
            .map(|r| ((r.name.clone(), r.label.clone()), Arc::new(r)))
            .collect();
        let mut found: BTreeMap<(PromptName, LabelName), LabelState> = BTreeMap::new();
        let mut add = |pairs: Vec<(PromptName, crate::domain::LabelTarget)>| {
            for (name, target) in pairs {
                if selector.matches_label(&name, &target.label) {
                    let key = (name.clone(), target.label.clone());
                    let rollout = rollouts.get(&key).cloned();
                    found.insert(
                        key,
                        LabelState {
                            name,
                            target,
                            rollout,
                            arm: None,
                        },
                    );
                }
            }
        };
        if selector.names.is_empty() && selector.prefixes.is_empty() {
            add(store.labels_under("")?);
        }
        for name in &selector.names {
            add(store
                .labels(name)?
                .into_iter()
                .map(|t| (name.clone(), t))
                .collect());
        }
        for prefix in &selector.prefixes {
            add(store.labels_under(prefix)?);
        }
        Ok(found.into_values().collect())
    }
}
