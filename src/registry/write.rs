//! Every write: the writer lock and its blocking-thread runner, publish,
//! label moves (promote, rollback, remove) and the commit of one revision.

use super::disk::{self, WriteHealth};
use super::{Registry, RegistryError, Result, WriterState};
use crate::domain::release::{Gate, PromotionRequest};
use crate::domain::validate;
use crate::domain::{
    rollback_target, Change, Clearance, ContentDigest, LabelMove, LabelName, LabelTarget, Micros,
    MoveKind, NewVersion, NoRollbackTarget, PromptName, Revision, Version,
};
use crate::store::StoreError;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The outcome of a publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub version: u64,
    pub digest: ContentDigest,
    pub revision: u64,
    /// False when identical content already existed.
    pub created: bool,
}

/// The outcome of a label move.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    /// False when the label already pointed there: nothing was written.
    pub changed: bool,
    pub revision: u64,
    pub from_version: Option<u64>,
    pub to_version: Option<u64>,
    pub digest: Option<ContentDigest>,
    /// Set when the label is protected: the label did not move, this
    /// promotion request was made instead (`to_version` is its version).
    pub request: Option<PromotionRequest>,
    /// The move was an emergency rollback past the label's policy.
    pub emergency: bool,
    /// The rollout an emergency rollback aborted (the label stays on the
    /// stable version: `from_version` is the candidate withdrawn).
    pub rollout_aborted: Option<u64>,
}

/// What a label move does, once decided.
#[derive(Debug, Clone)]
pub(super) struct MoveStep {
    pub kind: MoveKind,
    pub from_version: Option<u64>,
    pub to_version: Option<u64>,
    pub digest: Option<ContentDigest>,
    pub clearance: Clearance,
    /// The rollout the move belongs to, as it stands after it.
    pub rollout: Option<Box<crate::domain::rollout::Rollout>>,
}

/// The promotion request a move completes, and the ledger entry of its
/// last approval: both written in the move's batch, before its own entry.
pub(super) struct Approved<'a> {
    pub request: &'a PromotionRequest,
    pub entry: crate::provenance::AuditEntry,
}

/// A requested label move, before the registry checks it.
#[derive(Debug, Clone)]
pub struct MoveRequest {
    pub name: PromptName,
    pub label: LabelName,
    pub actor: String,
    pub reason: String,
    /// The request's W3C trace id, when it carried one.
    pub trace_id: Option<String>,
}

impl Registry {
    /// Runs a write's section under the writer lock on a blocking thread,
    /// so that a store call stuck on a full disk never holds an async
    /// worker. Refused at once while writes are refused, or when the turn
    /// does not come within [`disk::WRITE_PATIENCE`].
    pub(super) async fn write<T: Send + 'static>(
        &self,
        section: impl FnOnce(&Registry) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.refuse_if_unwritable()?;
        let patience = disk::WRITE_PATIENCE;
        let stuck = || {
            RegistryError::Unwritable(format!(
                "the store did not take the write within {} s (storage is not answering); it was not acknowledged",
                patience.as_secs()
            ))
        };
        let turn = tokio::time::timeout(patience, self.inner.write_turn.clone().lock_owned())
            .await
            .map_err(|_| stuck())?;
        let this = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            // Held until the section ends, also when the caller gave up.
            let _turn = turn;
            this.check_free_space();
            this.refuse_if_unwritable()?;
            section(&this)
        });
        match tokio::time::timeout(patience, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(RegistryError::Unwritable(format!(
                "the write failed and was not acknowledged: {join}"
            ))),
            Err(_) => Err(stuck()),
        }
    }

    /// Looks at the free space now (one `statvfs`), so that the write that
    /// would fill the disk is the one refused.
    fn check_free_space(&self) {
        if let Ok(free) = self.store().free_space() {
            self.inner.gate.saw_free_space(self.inner.space, free);
        }
    }

    fn refuse_if_unwritable(&self) -> Result<()> {
        match self.inner.gate.get().refusal() {
            None => Ok(()),
            Some(why) => Err(RegistryError::Unwritable(why.to_string())),
        }
    }

    /// Publishes a version; identical content returns the existing version.
    /// Answers once the revision is durable.
    pub async fn publish(&self, new: NewVersion) -> Result<Published> {
        let digest = new.content.digest();
        let published = self
            .write(move |this| {
                let mut writer = this.lock_writer();
                let store = this.store();
                let existing = match store.version_by_digest(&new.name, &digest)? {
                    Some(number) => store.version(&new.name, number)?.filter(|v| !v.pruned),
                    None => None,
                };
                if let Some(existing) = existing {
                    return Ok(Published {
                        version: existing.number,
                        digest,
                        revision: existing.revision,
                        created: false,
                    });
                }
                {
                    let number = store.prompt(&new.name)?.map_or(1, |p| p.latest_version + 1);
                    let (revision, time) = writer.next();
                    let latest = LabelName::latest();
                    let previous = store.label(&new.name, &latest)?;
                    let version = Version {
                        name: new.name.clone(),
                        number,
                        digest,
                        content: new.content,
                        author: new.author.clone(),
                        description: new.description,
                        tags: new.tags,
                        created_at: time,
                        revision,
                        signature: Some(writer.sign_version(&new.name, number, &digest, time)),
                        pruned: false,
                    };
                    let latest_move = LabelMove {
                        name: new.name.clone(),
                        label: latest,
                        revision,
                        time,
                        kind: MoveKind::Promote,
                        from_version: previous.map(|p| p.version),
                        to_version: Some(number),
                        digest: Some(digest),
                        trace_id: new.trace_id.clone(),
                        actor: new.author.clone(),
                        reason: format!("version {number} published"),
                        clearance: Default::default(),
                        rollout: None,
                    };
                    let change = Revision {
                        revision,
                        time,
                        trace_id: new.trace_id,
                        changes: vec![
                            Change::VersionPublished {
                                name: new.name,
                                version: number,
                                digest,
                                author: new.author,
                            },
                            Change::LabelMoved(latest_move),
                        ],
                    };
                    this.commit(&mut writer, change, Some(&version), None)?;
                    Ok(Published {
                        version: number,
                        digest,
                        revision,
                        created: true,
                    })
                }
            })
            .await?;
        // Also for an existing version: it may have been committed by a
        // writer whose flush is still running.
        self.wait_durable(published.revision).await?;
        Ok(published)
    }

    /// Moves a label to `version` (promote). With `expected_version`, only if
    /// the label points there now (`Some(0)`: only if it does not exist).
    pub async fn set_label(
        &self,
        request: MoveRequest,
        version: u64,
        expected_version: Option<u64>,
    ) -> Result<Moved> {
        self.label_move(
            request,
            MoveKind::Promote,
            expected_version,
            move |_, _, _| Ok(Some(version)),
        )
        .await
    }

    /// Moves a label back: to `to_version`, or by default one step back in
    /// its history (see [`rollback_target`]). With `expected_version`, only
    /// if the label points there now, as [`Registry::set_label`].
    pub async fn rollback(
        &self,
        request: MoveRequest,
        to_version: Option<u64>,
        expected_version: Option<u64>,
    ) -> Result<Moved> {
        self.label_move(
            request,
            MoveKind::Rollback,
            expected_version,
            move |this, request, current| {
                // A label that was never set is an unknown label (NOT_FOUND,
                // as everywhere), with or without an explicit target: there
                // is no "back" to move it to.
                let never_set = || {
                    RegistryError::NotFound(format!(
                        "label {} of {} has never been set: nothing to roll back (promote a version)",
                        request.label, request.name
                    ))
                };
                let store = this.store();
                if let Some(version) = to_version {
                    let unknown = current.is_none()
                        && store.history(&request.name, &request.label, None, 1)?.is_empty();
                    return if unknown { Err(never_set()) } else { Ok(Some(version)) };
                }
                let mut history = store.history(&request.name, &request.label, None, usize::MAX)?;
                history.reverse();
                let target = rollback_target(&history).map_err(|why| match why {
                    NoRollbackTarget::NoHistory => never_set(),
                    NoRollbackTarget::LabelDidNotExist => RegistryError::FailedPrecondition(format!(
                        "nothing to roll back to: before its latest move, label {} of {} \
                         was not set (use unlabel to remove it, or promote a version)",
                        request.label, request.name
                    )),
                })?;
                Ok(Some(target))
            },
        )
        .await
    }

    /// A rollback asked for as an emergency: while a rollout runs on the
    /// label, it aborts the rollout (every agent back on the stable
    /// version, the label unchanged); otherwise it is an ordinary
    /// [`Registry::rollback`], which the release gate may let past a policy
    /// or freeze as an emergency.
    pub async fn emergency_rollback(
        &self,
        request: MoveRequest,
        to_version: Option<u64>,
        expected_version: Option<u64>,
    ) -> Result<Moved> {
        if self.active_rollout(&request.name, &request.label).is_none() {
            return self.rollback(request, to_version, expected_version).await;
        }
        self.check_actor_reason(&request)?;
        let moved = self
            .write(move |this| {
                let mut writer = this.lock_writer();
                let rollout = this
                    .store()
                    .rollout(&request.name, &request.label)?
                    .filter(|r| r.state.is_active())
                    .ok_or_else(|| {
                        RegistryError::FailedPrecondition(format!(
                            "the rollout of {} {} ended meanwhile: look at the label and retry",
                            request.name, request.label
                        ))
                    })?;
                if let Some(expected) = expected_version {
                    if expected != rollout.stable.version && expected != rollout.candidate.version {
                        return Err(RegistryError::FailedPrecondition(format!(
                            "label {} of {} is under rollout {} (v{} -> v{}), not at the expected version {expected}",
                            request.label, request.name, rollout.id, rollout.stable.version, rollout.candidate.version
                        )));
                    }
                }
                let revision = this.abort_for_rollback(&mut writer, request, &rollout)?;
                Ok(Moved {
                    changed: true,
                    revision,
                    from_version: Some(rollout.candidate.version),
                    to_version: Some(rollout.stable.version),
                    digest: Some(rollout.stable.digest),
                    request: None,
                    emergency: true,
                    rollout_aborted: Some(rollout.id),
                })
            })
            .await?;
        self.wait_durable(moved.revision).await?;
        Ok(moved)
    }

    /// Removes a label; a recorded move like any other.
    pub async fn remove_label(&self, request: MoveRequest) -> Result<Moved> {
        self.label_move(
            request,
            MoveKind::Remove,
            None,
            |_, request, current| match current {
                Some(_) => Ok(None),
                None => Err(RegistryError::NotFound(format!(
                    "label {} is not set on {}",
                    request.label, request.name
                ))),
            },
        )
        .await
    }

    /// The one path of every label move: checks the actor and reason, then,
    /// under the writer lock on a blocking thread, reads the label's
    /// current target, checks `expected_version` (compare-and-set), asks
    /// `target` where the label goes (`None`: removed), commits, and waits
    /// until the move is durable.
    async fn label_move(
        &self,
        request: MoveRequest,
        kind: MoveKind,
        expected_version: Option<u64>,
        target: impl FnOnce(&Registry, &MoveRequest, Option<&LabelTarget>) -> Result<Option<u64>>
            + Send
            + 'static,
    ) -> Result<Moved> {
        self.check_actor_reason(&request)?;
        let moved = self
            .write(move |this| {
                let mut writer = this.lock_writer();
                this.refuse_under_rollout(&request)?;
                let current = this.existing_label_target(&request.name, &request.label)?;
                check_expected(&request, current.as_ref(), expected_version)?;
                let to_version = target(this, &request, current.as_ref())?;
                this.move_label(&mut writer, request, kind, current, to_version)
            })
            .await?;
        self.wait_durable(moved.revision).await?;
        Ok(moved)
    }

    /// A plain move of a label under an active rollout is refused (and so is
    /// the last approval of a request for one): the rollout owns the label
    /// until it completes or aborts.
    pub(crate) fn refuse_under_rollout(&self, request: &MoveRequest) -> Result<()> {
        if let Some(rollout) = self.store().rollout(&request.name, &request.label)? {
            if rollout.state.is_active() {
                return Err(RegistryError::FailedPrecondition(format!(
                    "label {} of {} is under rollout {} ({}, {} on v{}): move it with \
                     `promptreg rollout abort|promote`, or `rollback --emergency` to abort the rollout",
                    request.label,
                    request.name,
                    rollout.id,
                    rollout.state.as_str(),
                    crate::domain::rollout::percent(rollout.weight_bp),
                    rollout.candidate.version
                )));
            }
        }
        Ok(())
    }

    /// The shared tail of every label move, under the writer lock: checks the
    /// target exists and is not pruned, reports a no-op, passes the release
    /// gate (which may refuse the move, or turn it into a promotion request),
    /// and commits the move as one revision. `label_move` has already refused
    /// a label under an active rollout.
    fn move_label(
        &self,
        writer: &mut WriterState,
        request: MoveRequest,
        kind: MoveKind,
        current: Option<LabelTarget>,
        to_version: Option<u64>,
    ) -> Result<Moved> {
        let digest = self.movable_target(&request, kind, to_version)?;
        let from_version = current.as_ref().map(|c| c.version);
        let unmoved = |revision, request| Moved {
            changed: false,
            revision,
            from_version,
            to_version,
            digest,
            request,
            emergency: false,
            rollout_aborted: None,
        };
        if let (Some(current), Some(_)) = (&current, to_version) {
            if Some(current.version) == to_version {
                return Ok(unmoved(current.revision, None));
            }
        }
        let (gate, policy) =
            self.gate_move(&request.name, &request.label, kind, to_version, false)?;
        let clearance = match gate {
            Gate::Allow => Clearance::default(),
            Gate::Emergency => Clearance {
                emergency: true,
                ..Clearance::default()
            },
            Gate::Refuse(why) => {
                return Err(RegistryError::FailedPrecondition(why.describe(
                    &request.name,
                    &request.label,
                    crate::time::format_micros,
                )))
            }
            Gate::Request { approvals } => {
                let (Some(version), Some(digest)) = (to_version, digest) else {
                    // The gate asks for approvals only for a move to a version.
                    return Err(RegistryError::FailedPrecondition(format!(
                        "label {} of {} is protected and cannot be removed",
                        request.label, request.name
                    )));
                };
                let ttl = policy.as_ref().and_then(|p| p.request_ttl_secs);
                let opened = self.open_request(
                    writer,
                    request,
                    kind,
                    (version, digest),
                    from_version,
                    approvals,
                    ttl,
                    None,
                )?;
                return Ok(unmoved(writer.head, Some(opened)));
            }
        };
        let emergency = clearance.emergency;
        let step = MoveStep {
            kind,
            from_version,
            to_version,
            digest,
            clearance,
            rollout: None,
        };
        let revision = self.commit_move(writer, request, step, None)?;
        Ok(Moved {
            changed: true,
            revision,
            from_version,
            to_version,
            digest,
            request: None,
            emergency,
            rollout_aborted: None,
        })
    }

    /// The digest of the version a label would point to (`None`: removed),
    /// once it exists and is not pruned.
    pub(super) fn movable_target(
        &self,
        request: &MoveRequest,
        kind: MoveKind,
        to_version: Option<u64>,
    ) -> Result<Option<ContentDigest>> {
        let Some(number) = to_version else {
            return Ok(None);
        };
        let version = self.existing_version(&request.name, number)?;
        // Agents could neither fetch nor verify what the label would
        // point to.
        if version.pruned {
            let what = match kind {
                MoveKind::Rollback => "roll back",
                MoveKind::Promote | MoveKind::Remove | MoveKind::Rollout => "move",
            };
            return Err(RegistryError::FailedPrecondition(format!(
                "cannot {what} label {} of {} to version {number}: {} v{number} was pruned \
                 (its content is gone); choose a version that is not pruned",
                request.label, request.name, request.name
            )));
        }
        Ok(Some(version.digest))
    }

    /// Commits one label move as a revision; with `approved`, the
    /// promotion request it completes is written in the same batch.
    pub(super) fn commit_move(
        &self,
        writer: &mut WriterState,
        request: MoveRequest,
        step: MoveStep,
        approved: Option<Approved<'_>>,
    ) -> Result<u64> {
        let (revision, time) = writer.next();
        let mv = LabelMove {
            name: request.name,
            label: request.label,
            revision,
            time,
            kind: step.kind,
            from_version: step.from_version,
            to_version: step.to_version,
            digest: step.digest,
            actor: request.actor,
            reason: request.reason,
            trace_id: request.trace_id.clone(),
            clearance: step.clearance,
            rollout: step.rollout,
        };
        metrics::counter!(
            crate::telemetry::metrics::LABEL_MOVES,
            "label" => mv.label.to_string(),
            "kind" => mv.kind.as_str()
        )
        .increment(1);
        let change = Revision {
            revision,
            time,
            changes: vec![Change::LabelMoved(mv)],
            trace_id: request.trace_id,
        };
        self.commit(writer, change, None, approved)?;
        Ok(revision)
    }

    /// Writes one revision and hands it to group commit. On error nothing was
    /// written and the head does not move.
    pub(super) fn commit(
        &self,
        writer: &mut WriterState,
        revision: Revision,
        published: Option<&Version>,
        approved: Option<Approved<'_>>,
    ) -> Result<()> {
        let ledger = self.store().ledger_head()?;
        let written = match approved {
            None => {
                let audit = super::audit::revision_entries(&ledger, &revision, published);
                self.store().commit(&revision, published, &audit)
            }
            Some(approved) => {
                let mut audit = vec![approved.entry.clone()];
                audit.extend(super::audit::revision_entries(
                    &approved.entry.head(),
                    &revision,
                    published,
                ));
                self.store()
                    .commit_approved(&revision, &audit, approved.request)
            }
        };
        if let Err(error) = written {
            match error {
                StoreError::Io(_) => {
                    // sled fails every later write after an I/O error.
                    self.inner.gate.set(WriteHealth::FlushFailing(format!(
                        "a write failed in storage ({error}); writes are refused (nothing unflushed was acknowledged)"
                    )));
                }
                // The head may have moved without this writer (a write that
                // timed out and committed later): look before the next one.
                StoreError::Unavailable(_) | StoreError::Conflict(_) => writer.behind = true,
                _ => {}
            }
            return Err(error.into());
        }
        self.committed(writer, revision);
        Ok(())
    }

    /// What every revision in the store does to the writer, the caches,
    /// the rollouts and group commit (which hands it to the hub once it is
    /// durable).
    fn committed(&self, writer: &mut WriterState, revision: Revision) {
        self.forget_moved_labels(&revision);
        self.inner.rollouts.apply(&revision);
        writer.head = revision.revision;
        writer.last_time = revision.time;
        let number = revision.revision;
        self.inner.committed_head.store(number, Ordering::SeqCst);
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Arc::new(revision));
        self.inner.group_commit.committed(number);
    }

    pub(super) fn lock_writer(&self) -> std::sync::MutexGuard<'_, WriterState> {
        // A panic while holding the lock cannot leave the state half-updated:
        // `commit` updates it only after the batch is applied.
        let mut writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // On a cluster store another server may have written since: a write
        // starts from the store's head (one read), not only after a failure.
        if writer.behind || self.store().is_cluster() {
            match self.catch_up(&mut writer) {
                Ok(()) => writer.behind = false,
                // The next write fails on its guard and tries again.
                Err(error) => tracing::warn!(%error, "cannot read the store's head revision"),
            }
        }
        writer
    }

    /// Takes in the revisions the store holds past the writer's head: those
    /// of a write that was reported failed but committed after all.
    pub(super) fn catch_up(&self, writer: &mut WriterState) -> Result<()> {
        let head = self.store().head_revision()?;
        while writer.head < head {
            let number = writer.head + 1;
            let revision = self.store().revision(number)?.ok_or_else(|| {
                StoreError::Inconsistent(format!(
                    "the head revision is {head} but revision {number} is not in the log"
                ))
            })?;
            tracing::debug!(revision = number, "taking in a revision written elsewhere");
            self.committed(writer, revision);
        }
        Ok(())
    }

    pub(super) fn check_actor_reason(&self, request: &MoveRequest) -> Result<()> {
        validate::actor_and_reason(&request.actor, &request.reason, &self.inner.limits)?;
        Ok(())
    }
}

impl WriterState {
    /// The next revision and its time (never earlier than the head's).
    pub(super) fn next(&self) -> (u64, Micros) {
        (self.head + 1, crate::time::now_micros().max(self.last_time))
    }
}

/// The compare-and-set of promote and rollback: with `expected`, the label
/// must point to that version now (0: it must not be set); a lost race is
/// FAILED_PRECONDITION naming what it points to.
fn check_expected(
    request: &MoveRequest,
    current: Option<&LabelTarget>,
    expected: Option<u64>,
) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let actual = current.map(|c| c.version);
    if actual.unwrap_or(0) == expected {
        return Ok(());
    }
    Err(RegistryError::FailedPrecondition(format!(
        "label {} of {} points to {}, not the expected version {expected}",
        request.label,
        request.name,
        describe_target(actual),
    )))
}

fn describe_target(version: Option<u64>) -> String {
    match version {
        Some(v) => format!("version {v}"),
        None => "nothing (it is not set)".to_string(),
    }
}
