//! On a cluster store, what other servers on the same prefix commit. A
//! revision is taken in through the writer's catch-up, the path every
//! revision of this server takes (label cache, rollouts, group commit and
//! the hub, so this server's watchers see it); tokens are reloaded, so a
//! token created elsewhere authenticates here and one revoked elsewhere
//! ends the watches it opened here.

use super::{Inner, Registry};
use crate::store::etcd::Followed;
use std::sync::Weak;
use tokio::sync::mpsc::UnboundedReceiver;

pub(super) async fn run_follower(registry: Weak<Inner>, mut changes: UnboundedReceiver<Followed>) {
    while let Some(first) = changes.recv().await {
        let (mut head, mut tokens) = (first.moves_head(), first.touches_tokens());
        // Everything that arrived meanwhile is one round of reads.
        while let Ok(more) = changes.try_recv() {
            head |= more.moves_head();
            tokens |= more.touches_tokens();
        }
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let this = Registry { inner };
        let _ = tokio::task::spawn_blocking(move || {
            if head {
                let mut writer = this.lock_writer();
                if let Err(error) = this.catch_up(&mut writer) {
                    tracing::warn!(%error, "cannot take in revisions written by another server");
                    writer.behind = true;
                }
            }
            if tokens {
                if let Err(error) = this.inner.access.refresh(this.store()) {
                    tracing::warn!(%error, "cannot reload tokens written by another server");
                }
            }
        })
        .await;
    }
}
