//! The on-disk encoding of records. These types are the storage format and
//! nothing else: they are never served on the wire, and the domain never sees
//! them. Each value is one format byte followed by a JSON document; a new
//! encoding gets a new format byte, so old records stay readable.

use super::sealing::{DataKey, Sealed};
use crate::domain::access::{Binding, Role, Token};
use crate::domain::{
    Change, ChatMessage, Content, ContentDigest, LabelMove, LabelName, LabelTarget, Micros,
    MoveKind, PromptName, PromptSummary, Revision, TemplateBody, Version, VersionSignature,
};
use crate::provenance::AuditEntry;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Format byte of a JSON-encoded record.
const FORMAT_JSON: u8 = 1;

/// Names read back from disk were validated when written; this bound only
/// guards against garbage.
const STORED_NAME_LIMIT: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[error("corrupt record {key}: {reason}")]
pub struct CorruptRecord {
    pub key: String,
    pub reason: String,
}

pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_JSON];
    // Serialising these plain structs to a Vec cannot fail: no maps with
    // non-string keys, no custom serialisers.
    serde_json::to_writer(&mut out, record).expect("record serialises");
    out
}

pub fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T, CorruptRecord> {
    let corrupt = |reason: String| CorruptRecord {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        reason,
    };
    match bytes.split_first() {
        Some((&FORMAT_JSON, json)) => {
            serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))
        }
        Some((format, _)) => Err(corrupt(format!("unknown record format {format}"))),
        None => Err(corrupt("empty value".into())),
    }
}

#[derive(Serialize, Deserialize)]
pub struct VersionRec {
    pub name: String,
    pub version: u64,
    pub digest: String,
    /// The template; `None` when the content is sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRec>,
    pub variables: Vec<String>,
    /// The model config; `None` when the content is sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_config_json: Option<String>,
    /// Template and model config encrypted together (a [`SealedContent`]),
    /// when the store is encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
    pub author: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub created_at: Micros,
    pub revision: u64,
    /// Hex Ed25519 signature; absent in records written before signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_id: Option<String>,
    /// The content was removed by retention (a tombstone).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pruned: bool,
}

/// What an encrypted store seals of a version.
#[derive(Serialize, Deserialize)]
pub struct SealedContent {
    pub template: TemplateRec,
    pub model_config_json: String,
}

impl VersionRec {
    /// Drops the content, keeping everything else: a retention tombstone.
    pub fn prune(&mut self) {
        self.template = None;
        self.model_config_json = None;
        self.sealed = None;
        self.pruned = true;
    }

    /// Replaces the template and model config by their sealed form. A
    /// record missing either (a tombstone, or a damaged record) is left as
    /// it is.
    pub fn seal(&mut self, data_key: &DataKey, record_key: &[u8]) {
        match (self.template.take(), self.model_config_json.take()) {
            (Some(template), Some(model_config_json)) => {
                let content = SealedContent {
                    template,
                    model_config_json,
                };
                let plain = serde_json::to_vec(&content).expect("sealed content serialises");
                self.sealed = Some(data_key.seal(record_key, &plain));
            }
            // Both `take`s ran before the match: put back what was there.
            (template, model_config_json) => {
                self.template = template;
                self.model_config_json = model_config_json;
            }
        }
    }

    /// Restores the template and model config from their sealed form.
    pub fn unseal(&mut self, data_key: Option<&DataKey>, record_key: &[u8]) -> Result<(), String> {
        let Some(sealed) = self.sealed.take() else {
            return Ok(());
        };
        let data_key = data_key.ok_or("the content is encrypted and the server has no data key")?;
        let plain = data_key.open(record_key, &sealed)?;
        let content: SealedContent = serde_json::from_slice(&plain)
            .map_err(|e| format!("decrypted content is unreadable: {e}"))?;
        self.template = Some(content.template);
        self.model_config_json = Some(content.model_config_json);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TemplateRec {
    Text { text: String },
    Chat { messages: Vec<ChatMessageRec> },
}

#[derive(Serialize, Deserialize)]
pub struct ChatMessageRec {
    pub role: String,
    pub content: String,
}

#[derive(Serialize, Deserialize)]
pub struct LabelRec {
    pub version: u64,
    pub digest: String,
    pub revision: u64,
    pub updated_at: Micros,
}

#[derive(Serialize, Deserialize)]
pub struct PromptRec {
    pub latest_version: u64,
    pub latest_digest: String,
    pub updated_at: Micros,
}

#[derive(Serialize, Deserialize)]
pub struct MoveRec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub name: String,
    pub label: String,
    pub revision: u64,
    pub time: Micros,
    pub kind: String,
    pub from_version: Option<u64>,
    pub to_version: Option<u64>,
    pub digest: Option<String>,
    pub actor: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emergency: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Box<super::RolloutRec>>,
}

#[derive(Serialize, Deserialize)]
pub struct RevisionRec {
    pub revision: u64,
    pub time: Micros,
    pub changes: Vec<ChangeRec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChangeRec {
    VersionPublished {
        name: String,
        version: u64,
        digest: String,
        author: String,
    },
    LabelMoved(MoveRec),
}

/// A public signing key.
#[derive(Serialize, Deserialize)]
pub struct KeyRec {
    pub public_key: String,
    pub created_at: Micros,
    pub revision: u64,
}

/// A bearer token (`t/{name}`): its hash and bindings, never the secret.
#[derive(Serialize, Deserialize)]
pub struct TokenRec {
    pub hash: String,
    /// A certificate grant's subject (absent in records written before
    /// mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub bindings: Vec<BindingRec>,
    pub created: Micros,
    pub created_by: String,
    pub expires: Option<Micros>,
    pub revoked: Option<Micros>,
}

/// One role binding of a token.
#[derive(Serialize, Deserialize)]
pub struct BindingRec {
    pub role: String,
    pub prefixes: Vec<String>,
    pub labels: Vec<String>,
}

impl From<&Token> for TokenRec {
    fn from(token: &Token) -> Self {
        TokenRec {
            hash: token.hash.clone(),
            subject: token.subject.clone(),
            bindings: token
                .bindings
                .iter()
                .map(|b| BindingRec {
                    role: b.role.as_str().to_string(),
                    prefixes: b.prefixes.clone(),
                    labels: b.labels.iter().map(|l| l.as_str().to_string()).collect(),
                })
                .collect(),
            created: token.created,
            created_by: token.created_by.clone(),
            expires: token.expires,
            revoked: token.revoked,
        }
    }
}

impl TokenRec {
    pub fn into_domain(self, name: &str) -> Result<Token, String> {
        let bindings = self
            .bindings
            .into_iter()
            .map(|b| {
                let role = Role::parse("role", &b.role).map_err(|e| e.to_string())?;
                let labels = b
                    .labels
                    .iter()
                    .map(|l| label(l))
                    .collect::<Result<_, _>>()?;
                Binding::new(role, b.prefixes, labels, STORED_NAME_LIMIT).map_err(|e| e.to_string())
            })
            .collect::<Result<_, String>>()?;
        Ok(Token {
            name: name.to_string(),
            hash: self.hash,
            subject: self.subject,
            bindings,
            created: self.created,
            created_by: self.created_by,
            expires: self.expires,
            revoked: self.revoked,
        })
    }
}

/// One audit ledger entry.
#[derive(Serialize, Deserialize)]
pub struct AuditRec {
    pub sequence: u64,
    pub revision: u64,
    pub time: Micros,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub trace_id: String,
    pub detail: String,
    pub previous_hash: String,
    pub hash: String,
}

impl From<&AuditEntry> for AuditRec {
    fn from(e: &AuditEntry) -> Self {
        AuditRec {
            sequence: e.sequence,
            revision: e.revision,
            time: e.time,
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            reason: e.reason.clone(),
            trace_id: e.trace_id.clone(),
            detail: e.detail.clone(),
            previous_hash: e.previous_hash.clone(),
            hash: e.hash.clone(),
        }
    }
}

impl From<AuditRec> for AuditEntry {
    fn from(r: AuditRec) -> Self {
        AuditEntry {
            sequence: r.sequence,
            revision: r.revision,
            time: r.time,
            actor: r.actor,
            action: r.action,
            target: r.target,
            reason: r.reason,
            trace_id: r.trace_id,
            detail: r.detail,
            previous_hash: r.previous_hash,
            hash: r.hash,
        }
    }
}

// --- domain -> record ---------------------------------------------------------

impl From<&Version> for VersionRec {
    fn from(v: &Version) -> Self {
        VersionRec {
            name: v.name.to_string(),
            version: v.number,
            digest: v.digest.to_string(),
            sealed: None,
            template: Some(match &v.content.template {
                TemplateBody::Text(text) => TemplateRec::Text { text: text.clone() },
                TemplateBody::Chat(messages) => TemplateRec::Chat {
                    messages: messages
                        .iter()
                        .map(|m| ChatMessageRec {
                            role: m.role.clone(),
                            content: m.content.clone(),
                        })
                        .collect(),
                },
            }),
            variables: v.content.variables.clone(),
            model_config_json: Some(v.content.model_config_json.clone()),
            author: v.author.clone(),
            description: v.description.clone(),
            tags: v.tags.clone(),
            created_at: v.created_at,
            revision: v.revision,
            signature: v.signature.as_ref().map(|s| hex::encode(&s.bytes)),
            signing_key_id: v.signature.as_ref().map(|s| s.key_id.clone()),
            pruned: v.pruned,
        }
    }
}

impl From<&LabelMove> for MoveRec {
    fn from(m: &LabelMove) -> Self {
        MoveRec {
            name: m.name.to_string(),
            label: m.label.to_string(),
            revision: m.revision,
            time: m.time,
            kind: m.kind.as_str().to_string(),
            from_version: m.from_version,
            to_version: m.to_version,
            digest: m.digest.map(|d| d.to_string()),
            actor: m.actor.clone(),
            reason: m.reason.clone(),
            trace_id: m.trace_id.clone(),
            request_id: m.clearance.request,
            approvers: m.clearance.approvers.clone(),
            emergency: m.clearance.emergency,
            rollout: m.rollout.as_deref().map(|r| Box::new(r.into())),
        }
    }
}

impl From<&Revision> for RevisionRec {
    fn from(r: &Revision) -> Self {
        RevisionRec {
            revision: r.revision,
            time: r.time,
            trace_id: r.trace_id.clone(),
            changes: r
                .changes
                .iter()
                .map(|c| match c {
                    Change::VersionPublished {
                        name,
                        version,
                        digest,
                        author,
                    } => ChangeRec::VersionPublished {
                        name: name.to_string(),
                        version: *version,
                        digest: digest.to_string(),
                        author: author.clone(),
                    },
                    Change::LabelMoved(m) => ChangeRec::LabelMoved(m.into()),
                })
                .collect(),
        }
    }
}

// --- record -> domain ---------------------------------------------------------

fn name(raw: &str) -> Result<PromptName, String> {
    PromptName::parse("name", raw, STORED_NAME_LIMIT).map_err(|e| e.to_string())
}

fn label(raw: &str) -> Result<LabelName, String> {
    LabelName::parse("label", raw).map_err(|e| e.to_string())
}

fn digest(raw: &str) -> Result<ContentDigest, String> {
    ContentDigest::parse("digest", raw).map_err(|e| e.to_string())
}

impl VersionRec {
    pub fn into_domain(mut self) -> Result<Version, String> {
        if self.pruned {
            self.template = Some(TemplateRec::Text {
                text: String::new(),
            });
            self.model_config_json = Some(String::new());
        }
        let template = match self.template.ok_or("the version has no template")? {
            TemplateRec::Text { text } => TemplateBody::Text(text),
            TemplateRec::Chat { messages } => TemplateBody::Chat(
                messages
                    .into_iter()
                    .map(|m| ChatMessage {
                        role: m.role,
                        content: m.content,
                    })
                    .collect(),
            ),
        };
        Ok(Version {
            name: name(&self.name)?,
            number: self.version,
            digest: digest(&self.digest)?,
            content: Content {
                template,
                variables: self.variables,
                model_config_json: self
                    .model_config_json
                    .ok_or("the version has no model config")?,
            },
            author: self.author,
            description: self.description,
            tags: self.tags,
            created_at: self.created_at,
            revision: self.revision,
            signature: match (self.signature, self.signing_key_id) {
                (Some(sig), Some(key_id)) => Some(VersionSignature {
                    key_id,
                    bytes: hex::decode(sig).map_err(|e| format!("signature is not hex: {e}"))?,
                }),
                _ => None,
            },
            pruned: self.pruned,
        })
    }
}

impl LabelRec {
    pub fn into_domain(self, label_name: &str) -> Result<LabelTarget, String> {
        Ok(LabelTarget {
            label: label(label_name)?,
            version: self.version,
            digest: digest(&self.digest)?,
            revision: self.revision,
            updated_at: self.updated_at,
        })
    }
}

impl PromptRec {
    pub fn into_domain(self, prompt_name: &str) -> Result<PromptSummary, String> {
        Ok(PromptSummary {
            name: name(prompt_name)?,
            latest_version: self.latest_version,
            latest_digest: digest(&self.latest_digest)?,
            updated_at: self.updated_at,
        })
    }
}

impl MoveRec {
    pub fn into_domain(self) -> Result<LabelMove, String> {
        let kind = match self.kind.as_str() {
            "promote" => MoveKind::Promote,
            "rollback" => MoveKind::Rollback,
            "remove" => MoveKind::Remove,
            "rollout" => MoveKind::Rollout,
            other => return Err(format!("unknown move kind {other:?}")),
        };
        Ok(LabelMove {
            name: name(&self.name)?,
            label: label(&self.label)?,
            revision: self.revision,
            time: self.time,
            kind,
            from_version: self.from_version,
            to_version: self.to_version,
            digest: self.digest.as_deref().map(digest).transpose()?,
            actor: self.actor,
            reason: self.reason,
            trace_id: self.trace_id,
            clearance: crate::domain::Clearance {
                request: self.request_id,
                approvers: self.approvers,
                emergency: self.emergency,
            },
            rollout: self
                .rollout
                .map(|r| (*r).into_domain().map(Box::new))
                .transpose()?,
        })
    }
}

impl RevisionRec {
    pub fn into_domain(self) -> Result<Revision, String> {
        let changes = self
            .changes
            .into_iter()
            .map(|c| match c {
                ChangeRec::VersionPublished {
                    name: n,
                    version,
                    digest: d,
                    author,
                } => Ok(Change::VersionPublished {
                    name: name(&n)?,
                    version,
                    digest: digest(&d)?,
                    author,
                }),
                ChangeRec::LabelMoved(m) => Ok(Change::LabelMoved(m.into_domain()?)),
            })
            .collect::<Result<_, String>>()?;
        Ok(Revision {
            revision: self.revision,
            time: self.time,
            changes,
            trace_id: self.trace_id,
        })
    }
}
