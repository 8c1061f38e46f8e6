//! Check results: recording one (with or without an attester's DSSE
//! envelope), reading them, the ListVersions filters that use them, and
//! their part of the audit verification.

use super::super::page::{next_token, page_size_of, parse_number_token};
use super::super::provenance::AuditReport;
use super::super::{Page, Registry, RegistryError, Result};
use crate::domain::release::{
    self, governing, newest_results, unmet_checks, CheckResult, MAX_CHECK_DETAILS_BYTES,
    MAX_CHECK_URL_BYTES,
};
use crate::domain::{validate, LabelName, PromptName, ValidationError, Version};
use crate::provenance::{check_message, verify_envelope, verify_signature, AuditEntry};
use crate::store::Store;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// A check result as an attester submits it.
#[derive(Debug, Clone, Default)]
pub struct Attestation {
    pub name: Option<PromptName>,
    pub version: u64,
    /// Empty with an envelope: the predicate names it.
    pub check: String,
    /// `None` with an envelope: the predicate says.
    pub passed: Option<bool>,
    pub score: Option<f64>,
    pub url: String,
    pub details: String,
    /// A DSSE envelope (JSON), or empty.
    pub envelope: String,
}

/// The ListVersions filters, ANDed.
#[derive(Debug, Clone, Default)]
pub struct VersionFilter {
    /// Every one of these tags, key and value equal.
    pub tags: BTreeMap<String, String>,
    /// The newest result of each of these checks passed.
    pub passing: Vec<String>,
    /// Satisfies this label's policy checks now.
    pub eligible_for: Option<LabelName>,
}

impl VersionFilter {
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.passing.is_empty() && self.eligible_for.is_none()
    }
}

/// Versions read from the store per step while filtering.
const FILTER_STEP: usize = 256;

impl Registry {
    /// Records a check result: immutable, signed by the server, with its
    /// ledger entry (`attest`), durable before the answer.
    pub async fn attest(&self, attester: &str, new: Attestation) -> Result<CheckResult> {
        let name = new
            .name
            .clone()
            .ok_or_else(|| ValidationError::new("name", "is required"))?;
        validate::version_number("version", new.version)?;
        if !new.check.is_empty() || new.envelope.is_empty() {
            release::check_name("check", &new.check)?;
        }
        if new.envelope.is_empty() && new.passed.is_none() {
            return Err(ValidationError::new(
                "result",
                "is required: CHECK_OUTCOME_PASS or CHECK_OUTCOME_FAIL",
            )
            .into());
        }
        release::score("score", new.score)?;
        validate::optional_text("url", &new.url, MAX_CHECK_URL_BYTES)?;
        validate::optional_text("details", &new.details, MAX_CHECK_DETAILS_BYTES)?;
        validate::optional_text("envelope", &new.envelope, MAX_CHECK_DETAILS_BYTES)?;
        let attester = attester.to_string();
        let result = self
            .write(move |this| {
                let writer = this.lock_writer();
                let version = this.existing_version(&name, new.version)?;
                if version.pruned {
                    return Err(RegistryError::FailedPrecondition(format!(
                        "{name} v{} was pruned (its content is gone): it can no longer be checked",
                        new.version
                    )));
                }
                let mut result = this.result_of(&version, &new, attester)?;
                let store = this.store();
                let head = store.ledger_head()?;
                let (_, time) = writer.next();
                result.time = time;
                result.sequence = head.sequence + 1;
                let message = check_message(&result);
                result.signature = crate::domain::VersionSignature {
                    key_id: writer.signer.key_id.clone(),
                    bytes: writer.signer.sign(&message),
                };
                let entry = attest_entry(&head, writer.head, &result, &message);
                store.put_check(&result, &entry)?;
                Ok(result)
            })
            .await?;
        self.store().flush().await?;
        Ok(result)
    }

    /// The result `new` describes for `version`, its envelope verified.
    fn result_of(
        &self,
        version: &Version,
        new: &Attestation,
        attester: String,
    ) -> Result<CheckResult> {
        let mut result = CheckResult {
            name: version.name.clone(),
            version: version.number,
            digest: version.digest,
            check: new.check.clone(),
            passed: new.passed.unwrap_or(false),
            score: new.score,
            url: new.url.clone(),
            details: new.details.clone(),
            attester,
            time: 0,
            sequence: 0,
            signature: crate::domain::VersionSignature {
                key_id: String::new(),
                bytes: Vec::new(),
            },
            envelope_key: String::new(),
            envelope: String::new(),
        };
        if new.envelope.is_empty() {
            return Ok(result);
        }
        let keys: Vec<(String, Vec<u8>)> = self
            .store()
            .attesters()?
            .into_iter()
            .filter(|a| a.removed.is_none())
            .map(|a| (a.name, a.public_key))
            .collect();
        let attested = verify_envelope(&new.envelope, &version.digest, &keys)
            .map_err(|e| ValidationError::new("envelope", e.to_string()))?;
        release::check_name("envelope.predicate.check", &attested.check)?;
        release::score("envelope.predicate.score", attested.score)?;
        let disagree = |field: &str, what: String| -> RegistryError {
            ValidationError::new(
                field,
                format!("disagrees with the envelope's predicate, which says {what}"),
            )
            .into()
        };
        if !new.check.is_empty() && new.check != attested.check {
            return Err(disagree("check", format!("{:?}", attested.check)));
        }
        if new.passed.is_some_and(|p| p != attested.passed) {
            return Err(disagree(
                "result",
                format!("{:?}", if attested.passed { "pass" } else { "fail" }),
            ));
        }
        if new.score.is_some() && new.score != attested.score {
            return Err(disagree("score", format!("{:?}", attested.score)));
        }
        result.check = attested.check;
        result.passed = attested.passed;
        result.score = attested.score;
        if result.url.is_empty() {
            result.url = attested.url;
        }
        result.envelope_key = attested.key;
        result.envelope = new.envelope.clone();
        Ok(result)
    }

    /// The results of one version: the newest per check (by name), or all,
    /// oldest first.
    pub fn list_checks(
        &self,
        name: &PromptName,
        version: u64,
        history: bool,
    ) -> Result<Vec<CheckResult>> {
        self.existing_version(name, version)?;
        let all = self.store().checks(name, version)?;
        if history {
            return Ok(all);
        }
        Ok(newest_results(&all).into_values().cloned().collect())
    }

    /// A page of versions, newest first, that pass `filter`, with the
    /// newest result of each check of every version listed.
    pub fn list_versions_filtered(
        &self,
        name: &PromptName,
        filter: &VersionFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Page<Version>, Vec<CheckResult>)> {
        for (i, check) in filter.passing.iter().enumerate() {
            release::check_name(&format!("passing[{i}]"), check)?;
        }
        let required: Vec<String> = match &filter.eligible_for {
            None => Vec::new(),
            Some(label) => {
                let policies = self.store().policies()?;
                governing(&policies, name, label).map_or_else(Vec::new, |p| p.require.clone())
            }
        };
        let page = if filter.is_empty() {
            self.list_versions(name, page_size, page_token)?
        } else {
            self.existing_prompt(name)?;
            let size = page_size_of(page_size);
            let mut below = parse_number_token(page_token)?;
            let mut items = Vec::new();
            while items.len() <= size {
                let step = self.store().list_versions(name, below, FILTER_STEP)?;
                let Some(last) = step.last() else {
                    break;
                };
                below = Some(last.number);
                let exhausted = step.len() < FILTER_STEP;
                for version in step {
                    if self.passes(&version, filter, &required)? {
                        items.push(version);
                    }
                }
                if exhausted {
                    break;
                }
            }
            let next_page_token = next_token(&mut items, size, |v| v.number.to_string());
            Page {
                items,
                next_page_token,
            }
        };
        let mut checks = Vec::new();
        for version in &page.items {
            let all = self.store().checks(name, version.number)?;
            checks.extend(newest_results(&all).into_values().cloned());
        }
        Ok((page, checks))
    }

    fn passes(
        &self,
        version: &Version,
        filter: &VersionFilter,
        required: &[String],
    ) -> Result<bool> {
        if !filter
            .tags
            .iter()
            .all(|(k, v)| version.tags.get(k) == Some(v))
        {
            return Ok(false);
        }
        if filter.eligible_for.is_some() && version.pruned {
            return Ok(false);
        }
        if filter.passing.is_empty() && required.is_empty() {
            return Ok(true);
        }
        let results = self.store().checks(&version.name, version.number)?;
        Ok(unmet_checks(&filter.passing, &results).is_empty()
            && unmet_checks(required, &results).is_empty())
    }
}

/// The ledger entry of a check result: its outcome, score and the hash of
/// the message the server signed.
fn attest_entry(
    head: &crate::provenance::LedgerHead,
    revision: u64,
    result: &CheckResult,
    message: &[u8],
) -> AuditEntry {
    let mut detail = result.outcome().to_string();
    if let Some(score) = result.score {
        detail.push_str(&format!("; score {score}"));
    }
    if !result.envelope_key.is_empty() {
        detail.push_str(&format!("; envelope by attester {}", result.envelope_key));
    }
    detail.push_str(&format!(
        "; signed message sha256 {}",
        hex::encode(Sha256::digest(message))
    ));
    AuditEntry::after(
        head,
        revision,
        result.time,
        &result.attester,
        "attest",
        format!("{}@v{}#{}", result.name, result.version, result.check),
        "",
        detail,
    )
}

/// Checks every check result: the server's signature, the version's digest,
/// an envelope again (with every attester key ever registered), and that
/// its ledger entry is there and names it.
pub(in crate::registry) fn verify_checks(
    store: &Store,
    keys: &HashMap<String, Vec<u8>>,
    report: &mut AuditReport,
) -> Result<()> {
    let attesters: Vec<(String, Vec<u8>)> = store
        .attesters()?
        .into_iter()
        .map(|a| (a.name, a.public_key))
        .collect();
    for result in store.all_checks()? {
        report.checks += 1;
        let what = format!(
            "check {} of {} v{} (entry {})",
            result.check, result.name, result.version, result.sequence
        );
        let message = check_message(&result);
        match keys.get(&result.signature.key_id) {
            None => report.problems.push(format!(
                "{what}: signed by unknown key {}",
                result.signature.key_id
            )),
            Some(public) if !verify_signature(public, &message, &result.signature.bytes) => {
                report.problems.push(format!(
                    "{what}: its signature does not verify with key {}",
                    result.signature.key_id
                ))
            }
            Some(_) => {}
        }
        if let Some(version) = store.version(&result.name, result.version)? {
            if version.digest != result.digest {
                report.problems.push(format!(
                    "{what}: names digest {}, but the version's is {}",
                    result.digest, version.digest
                ));
            }
        }
        if !result.envelope.is_empty() {
            if let Err(error) = verify_envelope(&result.envelope, &result.digest, &attesters) {
                report
                    .problems
                    .push(format!("{what}: its envelope does not verify: {error}"));
            }
        }
        let entry = store
            .audit_entries(result.sequence, 1)?
            .into_iter()
            .next()
            .filter(|e| e.sequence == result.sequence);
        let target = format!("{}@v{}#{}", result.name, result.version, result.check);
        let signed = hex::encode(Sha256::digest(&message));
        match entry {
            Some(e) if e.action == "attest" && e.target == target && e.detail.contains(&signed) => {
            }
            _ => report.problems.push(format!(
                "{what}: the ledger has no attest entry for it at sequence {}",
                result.sequence
            )),
        }
    }
    Ok(())
}
