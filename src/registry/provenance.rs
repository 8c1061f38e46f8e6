//! Signing keys, the audit ledger and its verification: the registry's
//! provenance use cases.

use super::page::{page_size_of, parse_number_token};
use super::{OpenError, Page, Registry, RegistryError, Result, WriterState};
use crate::domain::{validate, KeyRotation, Micros, PromptName};
use crate::provenance::{
    checkpoint_message, verify_signature, version_message, AuditEntry, LedgerHead, SigningKey,
};
use crate::store::{PublicKey, Store};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the signing key comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeySource {
    /// Generated into `DATA_DIR/keys/` on first start; rotated by the server.
    #[default]
    DataDir,
    /// Loaded from a PKCS#8 file, DER or PEM (`--signing-key`); rotated by
    /// replacing the file and restarting.
    File(PathBuf),
}

/// Filters of [`Registry::list_audit`]; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub name: Option<PromptName>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub since: Option<Micros>,
    pub until: Option<Micros>,
}

impl AuditFilter {
    fn matches(&self, e: &AuditEntry) -> bool {
        let prompt_ok = self.name.as_ref().is_none_or(|n| is_about_prompt(e, n));
        prompt_ok
            && self.actor.as_ref().is_none_or(|a| &e.actor == a)
            && self.action.as_ref().is_none_or(|a| &e.action == a)
            && self.since.is_none_or(|t| e.time >= t)
            && self.until.is_none_or(|t| e.time < t)
    }
}

/// Whether a ledger entry is about the prompt `name`. Targets take these
/// forms (documented on `AuditEntry.target` in the proto): `name@vN` for a
/// publish, `name@vN#check` for a check result, `name:label` for a label
/// move, `name:label#request-ID` for a promotion request and its reviews,
/// the bare `name` for a prune, and `key:ID`, `store`, `token:NAME`,
/// `attester:NAME` or `policy:PREFIX:label` for what is not about one
/// prompt. The action tells them apart, so that a prompt named `store`,
/// `key`, `token`, `attester` or `policy` does not collect those.
fn is_about_prompt(entry: &AuditEntry, name: &PromptName) -> bool {
    let name = name.as_str();
    match entry.action.as_str() {
        "rotate_key" | "enable_encryption" | "token_create" | "token_revoke" | "attester_add"
        | "attester_remove" | "policy_set" | "policy_delete" | "freeze" | "unfreeze" => false,
        "prune" => entry.target == name,
        _ => entry
            .target
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('@') || rest.starts_with(':')),
    }
}

/// A signed statement of the ledger head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub sequence: u64,
    pub head_hash: String,
    pub time: Micros,
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// What [`Registry::verify_audit`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    pub entries: u64,
    pub versions: u64,
    /// Check results whose signature (and envelope) were checked.
    pub checks: u64,
    /// The first entry whose hash or link is wrong (0: none).
    pub first_broken_sequence: u64,
    pub problems: Vec<String>,
    pub head_hash: String,
}

impl AuditReport {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Loads or creates the signing key at start-up. When the store does not
/// know the key yet, its public half and a ledger entry are recorded and
/// flushed here, before serving.
pub(super) fn open_signing_key(
    store: &Store,
    data_dir: &Path,
    source: &KeySource,
    head: u64,
    last_time: Micros,
) -> std::result::Result<SigningKey, OpenError> {
    let active = store.active_key_id()?;
    let (key, reason) = match (source, &active) {
        (KeySource::File(path), _) => (
            SigningKey::load(path)?,
            format!("signing key loaded from {}", path.display()),
        ),
        (KeySource::DataDir, Some(id)) => {
            let dir = keys_dir(data_dir);
            let path = dir.join(format!("{id}.pk8"));
            if !path.exists() {
                return Err(OpenError::SigningKey(format!(
                    "the active signing key {id} is missing: {} does not exist. Restore it from a backup, \
                     or start with --signing-key FILE",
                    path.display()
                )));
            }
            // A directory made by an older release (or by hand) follows the umask.
            crate::provenance::secure_keys_dir(&dir).map_err(|source| OpenError::DataDir {
                dir: dir.clone(),
                source,
            })?;
            let key = SigningKey::load(&path)?;
            // Adopting it would silently switch keys: another store's key
            // copied under this name, say.
            if &key.key_id != id {
                return Err(OpenError::SigningKey(format!(
                    "{} holds signing key {}, not the active key {id} its name says: it is another key \
                     (another store's?). Put this store's key file back (from your backup of DATA_DIR/keys/), \
                     or start with --signing-key FILE to switch keys on purpose (recorded in the audit ledger)",
                    path.display(),
                    key.key_id
                )));
            }
            (key, String::new())
        }
        (KeySource::DataDir, None) => (
            SigningKey::generate_into(&keys_dir(data_dir))?,
            "signing key generated on first start".to_string(),
        ),
    };
    if active.as_deref() != Some(key.key_id.as_str()) {
        let rotation = KeyRotation {
            key_id: key.key_id.clone(),
            public_key: key.public_key(),
            actor: "promptreg".to_string(),
            reason,
            time: crate::time::now_micros().max(last_time),
            revision: head,
        };
        let entry = super::audit::key_rotation(&store.ledger_head()?, &rotation);
        store.commit_key_rotation(&rotation, &entry)?;
        store.flush_blocking()?;
    }
    Ok(key)
}

fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

impl WriterState {
    /// Signs a version's signed message with the active key.
    pub(super) fn sign_version(
        &self,
        name: &PromptName,
        number: u64,
        digest: &crate::domain::ContentDigest,
        created_at: Micros,
    ) -> crate::domain::VersionSignature {
        crate::domain::VersionSignature {
            key_id: self.signer.key_id.clone(),
            bytes: self
                .signer
                .sign(&version_message(name, number, digest, created_at)),
        }
    }
}

impl Registry {
    /// Every public key the server has signed with, oldest first, and the
    /// active key's id.
    pub fn signing_keys(&self) -> Result<(Vec<PublicKey>, String)> {
        let active = self.lock_writer().signer.key_id.clone();
        Ok((self.store().signing_keys()?, active))
    }

    /// Generates a new signing key and makes it active. Old public keys stay
    /// published; versions keep the signature they were published with.
    pub async fn rotate_signing_key(
        &self,
        actor: String,
        reason: String,
    ) -> Result<(PublicKey, u64)> {
        validate::actor_and_reason(&actor, &reason, &self.inner.limits)?;
        if let KeySource::File(path) = &self.inner.key_source {
            return Err(RegistryError::FailedPrecondition(format!(
                "this server signs with --signing-key {}; rotate by restarting it with a new key file",
                path.display()
            )));
        }
        // Under the writer lock on a blocking thread, as every write.
        let (public, revision) = self
            .write(move |this| {
                let mut writer = this.lock_writer();
                let key = SigningKey::generate_into(&keys_dir(&this.inner.data_dir))?;
                let (_, time) = writer.next();
                let rotation = KeyRotation {
                    key_id: key.key_id.clone(),
                    public_key: key.public_key(),
                    actor,
                    reason,
                    time,
                    revision: writer.head,
                };
                let entry = super::audit::key_rotation(&this.store().ledger_head()?, &rotation);
                this.store().commit_key_rotation(&rotation, &entry)?;
                writer.signer = key;
                let public = PublicKey {
                    key_id: rotation.key_id,
                    public_key: rotation.public_key,
                    created_at: time,
                    revision: rotation.revision,
                };
                Ok((public, rotation.revision))
            })
            .await?;
        // Not a revision of its own: make it durable directly.
        self.store().flush().await?;
        Ok((public, revision))
    }

    /// Ledger entries matching `filter`, oldest first, paged by sequence.
    pub fn list_audit(
        &self,
        filter: &AuditFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<AuditEntry>> {
        let size = page_size_of(page_size);
        let mut from = parse_number_token(page_token)?.map_or(1, |after| after.saturating_add(1));
        let mut items = Vec::new();
        loop {
            let page = self.store().audit_entries(from, 1024)?;
            let Some(last) = page.last() else { break };
            from = last.sequence + 1;
            for entry in page {
                if filter.matches(&entry) {
                    items.push(entry);
                    if items.len() > size {
                        let next = items[size - 1].sequence.to_string();
                        items.truncate(size);
                        return Ok(Page {
                            items,
                            next_page_token: next,
                        });
                    }
                }
            }
        }
        Ok(Page {
            items,
            next_page_token: String::new(),
        })
    }

    /// Signs the ledger head with the active key.
    pub fn create_checkpoint(&self) -> Result<Checkpoint> {
        let writer = self.lock_writer();
        let head = self.store().ledger_head()?;
        let time = crate::time::now_micros();
        let signature = writer
            .signer
            .sign(&checkpoint_message(head.sequence, &head.hash, time));
        Ok(Checkpoint {
            sequence: head.sequence,
            head_hash: head.hash,
            time,
            key_id: writer.signer.key_id.clone(),
            signature,
        })
    }

    /// Recomputes the ledger's hash chain, every version's digest and
    /// signature, and (when given) a checkpoint kept elsewhere.
    pub fn verify_audit(&self, checkpoint: Option<&Checkpoint>) -> Result<AuditReport> {
        verify_store(self.store(), checkpoint)
    }
}

/// Recomputes the ledger's hash chain, every version's digest and
/// signature, and (when given) a checkpoint. Works on a store that is not
/// being served, for `promptreg check`.
pub fn verify_store(store: &Store, checkpoint: Option<&Checkpoint>) -> Result<AuditReport> {
    let mut report = AuditReport::default();
    let mut previous = LedgerHead::default();
    let mut hash_at_checkpoint = None;
    let broken = |report: &mut AuditReport, sequence: u64, problem: String| {
        if report.first_broken_sequence == 0 {
            report.first_broken_sequence = sequence;
        }
        report.problems.push(problem);
    };
    loop {
        let page = store.audit_entries(previous.sequence + 1, 1024)?;
        if page.is_empty() {
            break;
        }
        for entry in page {
            report.entries += 1;
            let seq = entry.sequence;
            if seq != previous.sequence + 1 {
                broken(
                    &mut report,
                    seq,
                    format!(
                        "ledger entries {} to {} are missing",
                        previous.sequence + 1,
                        seq - 1
                    ),
                );
            }
            if entry.previous_hash != previous.hash {
                broken(
                    &mut report,
                    seq,
                    format!(
                        "ledger entry {seq} does not link to entry {}: its previous_hash differs",
                        previous.sequence
                    ),
                );
            }
            if entry.compute_hash() != entry.hash {
                broken(&mut report, seq, format!("ledger entry {seq} was altered: its hash does not match its contents ({} {} by {})", entry.action, entry.target, entry.actor));
            }
            if checkpoint.is_some_and(|c| c.sequence == seq) {
                hash_at_checkpoint = Some(entry.hash.clone());
            }
            previous = entry.head();
        }
    }
    let head = store.ledger_head()?;
    if head != previous {
        broken(
            &mut report,
            head.sequence,
            format!(
                "the ledger head says entry {} ({}) but the last entry is {} ({})",
                head.sequence, head.hash, previous.sequence, previous.hash
            ),
        );
    }
    report.head_hash = previous.hash.clone();

    let keys: HashMap<String, Vec<u8>> = store
        .signing_keys()?
        .into_iter()
        .map(|k| (k.key_id, k.public_key))
        .collect();
    store.scan_versions(|version| {
        report.versions += 1;
        let version = match version {
            Ok(version) => version,
            Err(error) => {
                report
                    .problems
                    .push(format!("unreadable version record: {error}"));
                return;
            }
        };
        let label = format!("{} v{}", version.name, version.number);
        let computed = version.content.digest();
        // A pruned version has no content left to hash; its signature
        // still binds the digest.
        if !version.pruned && computed != version.digest {
            report.problems.push(format!(
                "{label}: stored content was altered: it hashes to {computed}, not its digest {}",
                version.digest
            ));
        }
        match &version.signature {
            None => report.problems.push(format!(
                "{label}: unsigned (published before signing existed)"
            )),
            Some(sig) => match keys.get(&sig.key_id) {
                None => report
                    .problems
                    .push(format!("{label}: signed by unknown key {}", sig.key_id)),
                Some(public) => {
                    let message = version_message(
                        &version.name,
                        version.number,
                        &version.digest,
                        version.created_at,
                    );
                    if !verify_signature(public, &message, &sig.bytes) {
                        report.problems.push(format!(
                            "{label}: signature does not verify with key {}",
                            sig.key_id
                        ));
                    }
                }
            },
        }
    })?;

    super::release::verify_checks(store, &keys, &mut report)?;

    if let Some(c) = checkpoint {
        match keys.get(&c.key_id) {
            None => report.problems.push(format!(
                "checkpoint at entry {}: signed by unknown key {}",
                c.sequence, c.key_id
            )),
            Some(public) => {
                if !verify_signature(
                    public,
                    &checkpoint_message(c.sequence, &c.head_hash, c.time),
                    &c.signature,
                ) {
                    report.problems.push(format!(
                        "checkpoint at entry {}: its signature does not verify",
                        c.sequence
                    ));
                }
            }
        }
        match hash_at_checkpoint {
            Some(hash) if hash == c.head_hash => {}
            Some(hash) => report.problems.push(format!(
                "the ledger was rewritten: entry {} hashes to {hash}, the checkpoint says {}",
                c.sequence, c.head_hash
            )),
            None => report.problems.push(format!(
                "the ledger has no entry {} that the checkpoint names",
                c.sequence
            )),
        }
    }
    Ok(report)
}

/// What [`Registry::prune_versions`] did (or would do, on a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneOutcome {
    pub pruned: Vec<u64>,
    pub kept_labelled: Vec<u64>,
}

/// Which versions of a prompt retention may prune.
#[derive(Debug, Clone)]
pub struct PruneRequest {
    pub name: PromptName,
    pub keep_last: usize,
    pub older_than: Option<std::time::Duration>,
    pub dry_run: bool,
    pub actor: String,
    pub reason: String,
}

impl Registry {
    /// Removes the content of versions outside the newest `keep_last` (and
    /// older than `older_than`) that no label but `latest` ever pointed to.
    /// A version any label ever pointed to is kept forever.
    pub async fn prune_versions(&self, request: PruneRequest) -> Result<PruneOutcome> {
        validate::keep_last("keep_last", request.keep_last)?;
        if !request.dry_run {
            validate::actor_and_reason(&request.actor, &request.reason, &self.inner.limits)?;
        }
        let dry_run = request.dry_run;
        // Under the writer lock on a blocking thread, as every write (a dry
        // run too: it reads what a prune would remove at one revision).
        let section = move |this: &Registry| {
            let name = &request.name;
            let writer = this.lock_writer();
            this.existing_version_count(name)?;
            let store = this.store();
            let labelled = store.labelled_versions(name)?;
            let now = crate::time::now_micros();
            let cutoff = request
                .older_than
                .map(|d| now.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)));
            let mut outcome = PruneOutcome::default();
            let versions = store.list_versions(name, None, usize::MAX)?;
            for version in versions.iter().skip(request.keep_last).rev() {
                if version.pruned || cutoff.is_some_and(|c| version.created_at >= c) {
                    continue;
                }
                if labelled.contains(&version.number) {
                    outcome.kept_labelled.push(version.number);
                } else {
                    outcome.pruned.push(version.number);
                }
            }
            if !request.dry_run && !outcome.pruned.is_empty() {
                let (_, time) = writer.next();
                let entry = super::audit::prune(
                    &store.ledger_head()?,
                    name,
                    &outcome.pruned,
                    writer.head,
                    time,
                    &request.actor,
                    &request.reason,
                );
                store.prune(name, &outcome.pruned, &entry)?;
                let mut cache = this
                    .inner
                    .versions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                for number in &outcome.pruned {
                    cache.remove(&(name.clone(), *number));
                }
            }
            Ok(outcome)
        };
        let outcome = if dry_run {
            self.off_runtime(section).await?
        } else {
            self.write(section).await?
        };
        if !dry_run && !outcome.pruned.is_empty() {
            self.store().flush().await?;
        }
        Ok(outcome)
    }
}

/// A span of time during which a label pointed to a version.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelPeriod {
    /// The move that put the label on the version.
    pub set_by: crate::domain::LabelMove,
    /// The move that took it away; `None` while it still points there.
    pub until: Option<crate::domain::LabelMove>,
}

impl Registry {
    /// Every version with `digest`, and every period a label pointed to
    /// each: the way from a digest in an agent's log to who put it there.
    pub fn find_by_digest(
        &self,
        digest: &crate::domain::ContentDigest,
    ) -> Result<Vec<(crate::domain::Version, Vec<LabelPeriod>)>> {
        let store = self.store();
        let mut out = Vec::new();
        for (name, number) in store.versions_with_digest(digest)? {
            let Some(version) = store.version(&name, number)? else {
                continue;
            };
            let mut periods = Vec::new();
            let mut open: Option<crate::domain::LabelMove> = None;
            // Ordered by label, then revision: one pass closes each period.
            for mv in store.prompt_history(&name)? {
                if let Some(start) = open.take() {
                    if start.label == mv.label {
                        periods.push(LabelPeriod {
                            set_by: start,
                            until: Some(mv.clone()),
                        });
                    } else {
                        periods.push(LabelPeriod {
                            set_by: start,
                            until: None,
                        });
                    }
                }
                if mv.to_version == Some(number) {
                    open = Some(mv);
                }
            }
            if let Some(start) = open {
                periods.push(LabelPeriod {
                    set_by: start,
                    until: None,
                });
            }
            periods.sort_by_key(|p| p.set_by.revision);
            out.push((version, periods));
        }
        Ok(out)
    }
}
