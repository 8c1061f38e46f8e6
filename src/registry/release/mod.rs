//! Release policy, the use cases: policies and freezes (admin), attester
//! keys, check results (`checks.rs`), promotion requests and their reviews
//! (`requests.rs`), and [`Registry::gate_move`], which every label move
//! calls under the writer lock (the decision itself is
//! [`crate::domain::release::gate`]).
//!
//! None of these writes is a revision: each is one store batch with its
//! ledger entry, made under the writer lock and flushed before the answer,
//! like a token. Only the move an approval makes is a revision. Policies,
//! freezes and checks are read from the store when a label moves (moves
//! are rare; nothing is cached, so nothing can be stale).

mod checks;
mod requests;

pub(super) use checks::verify_checks;
pub use checks::{Attestation, VersionFilter};
pub use requests::{RequestFilter, Reviewed};

use super::{Registry, RegistryError, Result, WriterState};
use crate::domain::release::{
    self, freezes_over, governing, Attester, Freeze, Gate, MoveFacts, Policy,
};
use crate::domain::validate;
use crate::domain::{LabelName, Micros, MoveKind, PromptName, ValidationError};
use crate::provenance::AuditEntry;
use crate::store::Store;

impl Registry {
    /// Runs `write` under the writer lock (it may add the entry's detail),
    /// then `commit` with a ledger entry made of the given words at the head
    /// revision, then flushes: the one shape of every release-policy write.
    async fn record<T: Send + 'static>(
        &self,
        words: Words,
        write: impl FnOnce(&Registry, &WriterState, Micros) -> Result<(T, Option<String>)>
            + Send
            + 'static,
        commit: impl FnOnce(&Store, &T, &AuditEntry) -> crate::store::Result<()> + Send + 'static,
    ) -> Result<T> {
        let value = self
            .write(move |this| {
                let writer = this.lock_writer();
                let (_, time) = writer.next();
                let (value, detail) = write(this, &writer, time)?;
                let words = match detail {
                    Some(detail) => words.detail(detail),
                    None => words,
                };
                let entry = AuditEntry::after(
                    &this.store().ledger_head()?,
                    writer.head,
                    time,
                    &words.actor,
                    words.action,
                    words.target,
                    &words.reason,
                    words.detail,
                );
                commit(this.store(), &value, &entry)?;
                Ok(value)
            })
            .await?;
        self.store().flush().await?;
        Ok(value)
    }

    /// Sets the policy of a label under a prefix; `set_by` and `set_at`
    /// are the actor and the time of the write, whatever `policy` says.
    pub async fn set_policy(&self, actor: &str, policy: Policy, reason: String) -> Result<Policy> {
        release::policy_prefix("prefix", &policy.prefix, self.inner.limits.max_name_bytes)?;
        movable("label", &policy.label)?;
        release::approvals("approvals", policy.approvals)?;
        release::required_checks("require", &policy.require)?;
        release::request_ttl("request_ttl_seconds", policy.request_ttl_secs.unwrap_or(0))?;
        validate::optional_text("reason", &reason, self.inner.limits.max_text_bytes)?;
        let policy = Policy {
            request_ttl_secs: policy.request_ttl_secs.filter(|s| *s > 0),
            set_by: actor.to_string(),
            ..policy
        };
        let words = Words::new(actor, "policy_set", policy.target(), &reason)
            .detail(describe_policy(&policy));
        self.record(
            words,
            move |_, _, time| {
                Ok((
                    Policy {
                        set_at: time,
                        ..policy
                    },
                    None,
                ))
            },
            |store, policy, entry| store.put_policy(policy, entry),
        )
        .await
    }

    /// Deletes the policy of a prefix and label.
    pub async fn delete_policy(
        &self,
        actor: &str,
        prefix: String,
        label: LabelName,
        reason: String,
    ) -> Result<Policy> {
        release::policy_prefix("prefix", &prefix, self.inner.limits.max_name_bytes)?;
        validate::optional_text("reason", &reason, self.inner.limits.max_text_bytes)?;
        let target = format!("policy:{prefix}:{label}");
        let words = Words::new(actor, "policy_delete", target, &reason);
        self.record(
            words,
            move |this, _, _| {
                let policy = this
                    .store()
                    .policies()?
                    .into_iter()
                    .find(|p| p.prefix == prefix && p.label == label)
                    .ok_or_else(|| {
                        RegistryError::NotFound(format!(
                            "no policy for label {label} on prefix {prefix:?}"
                        ))
                    })?;
                let detail = describe_policy(&policy);
                Ok((policy, Some(detail)))
            },
            |store, policy, entry| store.delete_policy(&policy.prefix, &policy.label, entry),
        )
        .await
    }

    /// Every policy, by prefix and label.
    pub fn list_policies(&self) -> Result<Vec<Policy>> {
        Ok(self.store().policies()?)
    }

    /// The policy that governs a label of a prompt, and the freezes in
    /// force over it.
    pub fn policy_for(
        &self,
        name: &PromptName,
        label: &LabelName,
    ) -> Result<(Option<Policy>, Vec<Freeze>)> {
        let policies = self.store().policies()?;
        let freezes = self.store().freezes()?;
        let now = crate::time::now_micros();
        Ok((
            governing(&policies, name, label).cloned(),
            freezes_over(&freezes, name, label, now)
                .into_iter()
                .cloned()
                .collect(),
        ))
    }

    /// Freezes a label under a prefix until a time; `set_by` and `set_at`
    /// are the actor and the time of the write, whatever `freeze` says.
    pub async fn freeze(&self, actor: &str, freeze: Freeze) -> Result<Freeze> {
        release::policy_prefix("prefix", &freeze.prefix, self.inner.limits.max_name_bytes)?;
        movable("label", &freeze.label)?;
        validate::required_text("reason", &freeze.reason, self.inner.limits.max_text_bytes)?;
        if freeze.until <= crate::time::now_micros() {
            return Err(ValidationError::new("until", "must be in the future").into());
        }
        let freeze = Freeze {
            set_by: actor.to_string(),
            ..freeze
        };
        let target = format!("policy:{}:{}", freeze.prefix, freeze.label);
        let words = Words::new(actor, "freeze", target, &freeze.reason).detail(format!(
            "until {}",
            crate::time::format_micros(freeze.until)
        ));
        self.record(
            words,
            move |_, _, time| {
                Ok((
                    Freeze {
                        set_at: time,
                        ..freeze
                    },
                    None,
                ))
            },
            |store, freeze, entry| store.put_freeze(freeze, entry),
        )
        .await
    }

    /// Ends the freeze of a prefix and label; `None` when none was in force.
    pub async fn unfreeze(
        &self,
        actor: &str,
        prefix: String,
        label: LabelName,
        reason: String,
    ) -> Result<Option<Freeze>> {
        release::policy_prefix("prefix", &prefix, self.inner.limits.max_name_bytes)?;
        validate::optional_text("reason", &reason, self.inner.limits.max_text_bytes)?;
        let now = crate::time::now_micros();
        let existing = self
            .store()
            .freezes()?
            .into_iter()
            .find(|f| f.prefix == prefix && f.label == label && f.in_force(now));
        let Some(existing) = existing else {
            return Ok(None);
        };
        let target = format!("policy:{prefix}:{label}");
        let words = Words::new(actor, "unfreeze", target, &reason);
        let freeze = self
            .record(
                words,
                move |_, _, _| Ok((existing, None)),
                |store, freeze, entry| store.delete_freeze(&freeze.prefix, &freeze.label, entry),
            )
            .await?;
        Ok(Some(freeze))
    }

    /// Every freeze in force, by prefix and label.
    pub fn list_freezes(&self) -> Result<Vec<Freeze>> {
        let now = crate::time::now_micros();
        Ok(self
            .store()
            .freezes()?
            .into_iter()
            .filter(|f| f.in_force(now))
            .collect())
    }

    /// Registers an attester's Ed25519 public key.
    pub async fn add_attester(
        &self,
        actor: &str,
        name: String,
        public_key: Vec<u8>,
    ) -> Result<Attester> {
        crate::domain::access::check_token_name("name", &name)?;
        if public_key.len() != 32 {
            return Err(ValidationError::new(
                "public_key",
                format!(
                    "is {} bytes; an Ed25519 public key is 32 bytes",
                    public_key.len()
                ),
            )
            .into());
        }
        let words = Words::new(actor, "attester_add", format!("attester:{name}"), "")
            .detail(hex::encode(&public_key));
        let actor = actor.to_string();
        self.record(
            words,
            move |this, _, time| {
                if this.store().attesters()?.iter().any(|a| a.name == name) {
                    return Err(RegistryError::FailedPrecondition(format!(
                        "an attester named {name} exists already (removed ones keep their name); choose another name"
                    )));
                }
                let attester = Attester {
                    name,
                    public_key,
                    added_by: actor,
                    added: time,
                    removed: None,
                };
                Ok((attester, None))
            },
            |store, attester, entry| store.put_attester(attester, entry),
        )
        .await
    }

    /// Every attester, removed ones too.
    pub fn list_attesters(&self) -> Result<Vec<Attester>> {
        Ok(self.store().attesters()?)
    }

    /// Removes an attester key: its envelopes are refused from now on.
    pub async fn remove_attester(
        &self,
        actor: &str,
        name: String,
        reason: String,
    ) -> Result<Attester> {
        crate::domain::access::check_token_name("name", &name)?;
        validate::optional_text("reason", &reason, self.inner.limits.max_text_bytes)?;
        let words = Words::new(
            actor,
            "attester_remove",
            format!("attester:{name}"),
            &reason,
        );
        self.record(
            words,
            move |this, _, time| {
                let mut attester = this
                    .store()
                    .attesters()?
                    .into_iter()
                    .find(|a| a.name == name)
                    .ok_or_else(|| {
                        RegistryError::NotFound(format!("no attester is named {name}"))
                    })?;
                if attester.removed.is_none() {
                    attester.removed = Some(time);
                }
                Ok((attester, None))
            },
            |store, attester, entry| store.put_attester(attester, entry),
        )
        .await
    }

    /// The gate of a label move, under the writer lock: reads the policy,
    /// the freezes and the target's checks, and decides.
    pub(super) fn gate_move(
        &self,
        name: &PromptName,
        label: &LabelName,
        kind: MoveKind,
        to_version: Option<u64>,
        approved: bool,
    ) -> Result<(Gate, Option<Policy>)> {
        let store = self.store();
        let policies = store.policies()?;
        let policy = governing(&policies, name, label).cloned();
        let all_freezes = store.freezes()?;
        let freezes = freezes_over(&all_freezes, name, label, crate::time::now_micros());
        if policy.is_none() && freezes.is_empty() {
            return Ok((Gate::Allow, None));
        }
        let results = match to_version {
            Some(version) => store.checks(name, version)?,
            None => Vec::new(),
        };
        let earlier_target = match (kind, to_version) {
            (MoveKind::Rollback, Some(version)) => store
                .history(name, label, None, usize::MAX)?
                .iter()
                .any(|m| m.to_version == Some(version)),
            _ => false,
        };
        let facts = MoveFacts {
            label,
            kind,
            to_version,
            earlier_target,
            approved,
        };
        let gate = release::gate(facts, policy.as_ref(), &freezes, &results);
        Ok((gate, policy))
    }
}

/// The words of one ledger entry.
struct Words {
    actor: String,
    action: &'static str,
    target: String,
    reason: String,
    detail: String,
}

impl Words {
    fn new(actor: &str, action: &'static str, target: String, reason: &str) -> Words {
        Words {
            actor: actor.to_string(),
            action,
            target,
            reason: reason.to_string(),
            detail: String::new(),
        }
    }

    fn detail(mut self, detail: String) -> Words {
        self.detail = detail;
        self
    }
}

/// A policy in one line, for the ledger.
fn describe_policy(policy: &Policy) -> String {
    let mut out = format!("approvals {}", policy.approvals);
    if !policy.require.is_empty() {
        out.push_str(&format!("; require {}", policy.require.join(", ")));
    }
    out.push_str(&format!(
        "; emergency rollback {}",
        if policy.allow_emergency_rollback {
            "allowed"
        } else {
            "not allowed"
        }
    ));
    if let Some(ttl) = policy.request_ttl_secs {
        out.push_str(&format!("; requests expire after {ttl} s"));
    }
    out
}

/// A label a policy or freeze may name: any but `latest`.
fn movable(field: &str, label: &LabelName) -> Result<()> {
    LabelName::parse_movable(field, label.as_str())?;
    Ok(())
}
