//! Release-policy state: check results, attester keys, policies, freezes
//! and promotion requests. Each write is one atomic batch with its ledger
//! entry (none is a revision: watchers see label moves only), durable after
//! [`Store::flush`]. The move an approval makes is a revision, written with
//! the request's new state by [`Store::commit_approved`].
//!
//! | key | value |
//! | --- | --- |
//! | `c/{name}\0{version}{sequence}` | a check result (sequence: its ledger entry's) |
//! | `e/{name}` | an attester's public key |
//! | `y/{prefix}\0{label}` | the policy of a label under a prefix |
//! | `z/{prefix}\0{label}` | a freeze of a label under a prefix |
//! | `q/{id}` | a promotion request |
//! | `meta/requests` | the last promotion request id |

use super::keys::{corrupt, key, read_u64};
use super::records::{decode, encode};
use super::{Batch, Result, Store};
use crate::domain::release::{
    Approval, Attester, CheckResult, Freeze, Policy, PromotionRequest, RequestState,
};
use crate::domain::{
    ContentDigest, LabelName, Micros, MoveKind, PromptName, Revision, VersionSignature,
};
use crate::provenance::AuditEntry;
use serde::{Deserialize, Serialize};

const KEY_REQUESTS: &[u8] = b"meta/requests";
const STORED_NAME_LIMIT: usize = 4096;

fn checks_prefix(name: &PromptName, version: u64) -> Vec<u8> {
    key(&[
        b"c/",
        name.as_str().as_bytes(),
        b"\0",
        &version.to_be_bytes(),
    ])
}

fn scoped_key(tag: &[u8], prefix: &str, label: &LabelName) -> Vec<u8> {
    key(&[tag, prefix.as_bytes(), b"\0", label.as_str().as_bytes()])
}

fn request_key(id: u64) -> Vec<u8> {
    key(&[b"q/", &id.to_be_bytes()])
}

#[derive(Serialize, Deserialize)]
struct CheckRec {
    name: String,
    version: u64,
    digest: String,
    check: String,
    passed: bool,
    score: Option<f64>,
    url: String,
    details: String,
    attester: String,
    time: Micros,
    sequence: u64,
    key_id: String,
    signature: String,
    envelope_key: String,
    envelope: String,
}

impl From<&CheckResult> for CheckRec {
    fn from(r: &CheckResult) -> Self {
        CheckRec {
            name: r.name.to_string(),
            version: r.version,
            digest: r.digest.to_string(),
            check: r.check.clone(),
            passed: r.passed,
            score: r.score,
            url: r.url.clone(),
            details: r.details.clone(),
            attester: r.attester.clone(),
            time: r.time,
            sequence: r.sequence,
            key_id: r.signature.key_id.clone(),
            signature: hex::encode(&r.signature.bytes),
            envelope_key: r.envelope_key.clone(),
            envelope: r.envelope.clone(),
        }
    }
}

impl CheckRec {
    fn into_domain(self) -> std::result::Result<CheckResult, String> {
        Ok(CheckResult {
            name: prompt(&self.name)?,
            version: self.version,
            digest: ContentDigest::parse("digest", &self.digest).map_err(|e| e.to_string())?,
            check: self.check,
            passed: self.passed,
            score: self.score,
            url: self.url,
            details: self.details,
            attester: self.attester,
            time: self.time,
            sequence: self.sequence,
            signature: VersionSignature {
                key_id: self.key_id,
                bytes: hex::decode(&self.signature).map_err(|e| e.to_string())?,
            },
            envelope_key: self.envelope_key,
            envelope: self.envelope,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct AttesterRec {
    public_key: String,
    added_by: String,
    added: Micros,
    removed: Option<Micros>,
}

#[derive(Serialize, Deserialize)]
struct PolicyRec {
    prefix: String,
    label: String,
    approvals: u32,
    require: Vec<String>,
    allow_emergency_rollback: bool,
    request_ttl_secs: Option<u64>,
    set_by: String,
    set_at: Micros,
}

#[derive(Serialize, Deserialize)]
struct FreezeRec {
    prefix: String,
    label: String,
    until: Micros,
    reason: String,
    set_by: String,
    set_at: Micros,
}

#[derive(Serialize, Deserialize)]
struct ApprovalRec {
    approver: String,
    reason: String,
    time: Micros,
}

#[derive(Serialize, Deserialize)]
struct RequestRec {
    id: u64,
    name: String,
    label: String,
    version: u64,
    digest: String,
    base_version: Option<u64>,
    kind: String,
    requester: String,
    reason: String,
    trace_id: Option<String>,
    created: Micros,
    expires: Micros,
    approvals_required: u32,
    approvals: Vec<ApprovalRec>,
    state: String,
    closed_by: String,
    closed_reason: String,
    move_revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollout: Option<super::SpecRec>,
}

impl From<&PromotionRequest> for RequestRec {
    fn from(r: &PromotionRequest) -> Self {
        RequestRec {
            id: r.id,
            name: r.name.to_string(),
            label: r.label.to_string(),
            version: r.version,
            digest: r.digest.to_string(),
            base_version: r.base_version,
            kind: r.kind.as_str().to_string(),
            requester: r.requester.clone(),
            reason: r.reason.clone(),
            trace_id: r.trace_id.clone(),
            created: r.created,
            expires: r.expires,
            approvals_required: r.approvals_required,
            approvals: r
                .approvals
                .iter()
                .map(|a| ApprovalRec {
                    approver: a.approver.clone(),
                    reason: a.reason.clone(),
                    time: a.time,
                })
                .collect(),
            state: r.state.as_str().to_string(),
            closed_by: r.closed_by.clone(),
            closed_reason: r.closed_reason.clone(),
            move_revision: r.move_revision,
            rollout: r.rollout.as_ref().map(Into::into),
        }
    }
}

impl RequestRec {
    fn into_domain(self) -> std::result::Result<PromotionRequest, String> {
        let kind = match self.kind.as_str() {
            "promote" => MoveKind::Promote,
            "rollback" => MoveKind::Rollback,
            "rollout" => MoveKind::Rollout,
            other => return Err(format!("unknown request kind {other:?}")),
        };
        Ok(PromotionRequest {
            id: self.id,
            name: prompt(&self.name)?,
            label: label(&self.label)?,
            version: self.version,
            digest: ContentDigest::parse("digest", &self.digest).map_err(|e| e.to_string())?,
            base_version: self.base_version,
            kind,
            requester: self.requester,
            reason: self.reason,
            trace_id: self.trace_id,
            created: self.created,
            expires: self.expires,
            approvals_required: self.approvals_required,
            approvals: self
                .approvals
                .into_iter()
                .map(|a| Approval {
                    approver: a.approver,
                    reason: a.reason,
                    time: a.time,
                })
                .collect(),
            state: RequestState::parse(&self.state)
                .ok_or_else(|| format!("unknown request state {:?}", self.state))?,
            closed_by: self.closed_by,
            closed_reason: self.closed_reason,
            move_revision: self.move_revision,
            rollout: self.rollout.map(super::SpecRec::into_domain).transpose()?,
        })
    }
}

fn prompt(raw: &str) -> std::result::Result<PromptName, String> {
    PromptName::parse("name", raw, STORED_NAME_LIMIT).map_err(|e| e.to_string())
}

fn label(raw: &str) -> std::result::Result<LabelName, String> {
    LabelName::parse("label", raw).map_err(|e| e.to_string())
}

impl Store {
    /// Appends `entry` and applies `change` in one batch.
    fn put_with_entry(&self, entry: &AuditEntry, change: impl FnOnce(&mut Batch)) -> Result<()> {
        let mut batch = Batch::default();
        self.append_ledger(&mut batch, std::slice::from_ref(entry))?;
        change(&mut batch);
        self.engine.apply(batch)
    }

    /// Records a check result with its ledger entry.
    pub fn put_check(&self, result: &CheckResult, entry: &AuditEntry) -> Result<()> {
        let key = key(&[
            &checks_prefix(&result.name, result.version),
            &result.sequence.to_be_bytes(),
        ]);
        self.put_with_entry(entry, |batch| {
            batch.put(key, encode(&CheckRec::from(result)))
        })
    }

    /// Every result of one version, oldest first.
    pub fn checks(&self, name: &PromptName, version: u64) -> Result<Vec<CheckResult>> {
        self.decode_all(&checks_prefix(name, version), |_, rec: CheckRec| {
            rec.into_domain()
        })
    }

    /// Every check result of the store, for the audit verification.
    pub fn all_checks(&self) -> Result<Vec<CheckResult>> {
        self.decode_all(b"c/", |_, rec: CheckRec| rec.into_domain())
    }

    /// Writes an attester (added, or changed: removed) with its entry.
    pub fn put_attester(&self, attester: &Attester, entry: &AuditEntry) -> Result<()> {
        let rec = AttesterRec {
            public_key: hex::encode(&attester.public_key),
            added_by: attester.added_by.clone(),
            added: attester.added,
            removed: attester.removed,
        };
        let key = key(&[b"e/", attester.name.as_bytes()]);
        self.put_with_entry(entry, |batch| batch.put(key, encode(&rec)))
    }

    /// Every attester, removed ones too, by name.
    pub fn attesters(&self) -> Result<Vec<Attester>> {
        self.decode_all(b"e/", |key, rec: AttesterRec| {
            Ok(Attester {
                name: String::from_utf8_lossy(&key[2..]).into_owned(),
                public_key: hex::decode(&rec.public_key).map_err(|e| e.to_string())?,
                added_by: rec.added_by,
                added: rec.added,
                removed: rec.removed,
            })
        })
    }

    /// Sets a policy (replacing the one of its prefix and label).
    pub fn put_policy(&self, policy: &Policy, entry: &AuditEntry) -> Result<()> {
        let rec = PolicyRec {
            prefix: policy.prefix.clone(),
            label: policy.label.to_string(),
            approvals: policy.approvals,
            require: policy.require.clone(),
            allow_emergency_rollback: policy.allow_emergency_rollback,
            request_ttl_secs: policy.request_ttl_secs,
            set_by: policy.set_by.clone(),
            set_at: policy.set_at,
        };
        let key = scoped_key(b"y/", &policy.prefix, &policy.label);
        self.put_with_entry(entry, |batch| batch.put(key, encode(&rec)))
    }

    /// Deletes the policy of a prefix and label.
    pub fn delete_policy(&self, prefix: &str, label: &LabelName, entry: &AuditEntry) -> Result<()> {
        let key = scoped_key(b"y/", prefix, label);
        self.put_with_entry(entry, |batch| batch.delete(key))
    }

    /// Every policy, by prefix and label.
    pub fn policies(&self) -> Result<Vec<Policy>> {
        self.decode_all(b"y/", |_, rec: PolicyRec| {
            Ok(Policy {
                prefix: rec.prefix,
                label: label(&rec.label)?,
                approvals: rec.approvals,
                require: rec.require,
                allow_emergency_rollback: rec.allow_emergency_rollback,
                request_ttl_secs: rec.request_ttl_secs,
                set_by: rec.set_by,
                set_at: rec.set_at,
            })
        })
    }

    /// Sets a freeze (replacing the one of its prefix and label).
    pub fn put_freeze(&self, freeze: &Freeze, entry: &AuditEntry) -> Result<()> {
        let rec = FreezeRec {
            prefix: freeze.prefix.clone(),
            label: freeze.label.to_string(),
            until: freeze.until,
            reason: freeze.reason.clone(),
            set_by: freeze.set_by.clone(),
            set_at: freeze.set_at,
        };
        let key = scoped_key(b"z/", &freeze.prefix, &freeze.label);
        self.put_with_entry(entry, |batch| batch.put(key, encode(&rec)))
    }

    /// Ends the freeze of a prefix and label.
    pub fn delete_freeze(&self, prefix: &str, label: &LabelName, entry: &AuditEntry) -> Result<()> {
        let key = scoped_key(b"z/", prefix, label);
        self.put_with_entry(entry, |batch| batch.delete(key))
    }

    /// Every freeze stored (some may have ended by time), by prefix and
    /// label.
    pub fn freezes(&self) -> Result<Vec<Freeze>> {
        self.decode_all(b"z/", |_, rec: FreezeRec| {
            Ok(Freeze {
                prefix: rec.prefix,
                label: label(&rec.label)?,
                until: rec.until,
                reason: rec.reason,
                set_by: rec.set_by,
                set_at: rec.set_at,
            })
        })
    }

    /// The id the next promotion request gets.
    pub fn next_request_id(&self) -> Result<u64> {
        let last = self
            .engine
            .get(KEY_REQUESTS)?
            .map(|raw| read_u64(KEY_REQUESTS, &raw))
            .transpose()?
            .unwrap_or(0);
        Ok(last + 1)
    }

    /// Writes a request (new, or changed) with its ledger entry.
    pub fn put_request(&self, request: &PromotionRequest, entry: &AuditEntry) -> Result<()> {
        let last = self.next_request_id()? - 1;
        self.put_with_entry(entry, |batch| {
            batch.put(request_key(request.id), encode(&RequestRec::from(request)));
            if request.id > last {
                batch.put(KEY_REQUESTS, request.id.to_be_bytes());
            }
        })
    }

    /// One request.
    pub fn request(&self, id: u64) -> Result<Option<PromotionRequest>> {
        let key = request_key(id);
        self.engine
            .get(&key)?
            .map(|raw| {
                let rec: RequestRec = decode(&key, &raw)?;
                rec.into_domain().map_err(|e| corrupt(&key, e))
            })
            .transpose()
    }

    /// Every request, oldest first.
    pub fn requests(&self) -> Result<Vec<PromotionRequest>> {
        self.decode_all(b"q/", |_, rec: RequestRec| rec.into_domain())
    }

    /// Commits the move an approval makes (a revision, as
    /// [`Store::commit`]) and the request's new state, in one batch: a
    /// request is approved exactly when its move is committed.
    pub fn commit_approved(
        &self,
        revision: &Revision,
        audit: &[AuditEntry],
        request: &PromotionRequest,
    ) -> Result<()> {
        let mut batch = self.revision_batch(revision, None, audit)?;
        batch.put(request_key(request.id), encode(&RequestRec::from(request)));
        self.apply_revision(batch, revision)
    }

    fn decode_all<R: for<'de> Deserialize<'de>, T>(
        &self,
        prefix: &[u8],
        into: impl Fn(&[u8], R) -> std::result::Result<T, String>,
    ) -> Result<Vec<T>> {
        self.entries(prefix)?
            .into_iter()
            .map(|(key, raw)| {
                let rec: R = decode(&key, &raw)?;
                into(&key, rec).map_err(|e| corrupt(&key, e))
            })
            .collect()
    }
}
