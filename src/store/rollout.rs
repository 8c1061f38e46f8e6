//! Rollout records. A rollout changes only through revisions: every label
//! move that carries a rollout (its start, steps, pauses, extensions and
//! end) writes the rollout as it stands into `o/{name}\0{label}` in the
//! revision's batch, so the record and the change log never disagree.
//!
//! | key | value |
//! | --- | --- |
//! | `o/{name}\0{label}` | the label's newest rollout, running or ended |
//! | `meta/rollouts` | the last rollout id given |

use super::keys::{corrupt, key, read_u64};
use super::records::{decode, encode};
use super::{Batch, Result, Store};
use crate::domain::rollout::{Guardrail, Metric, Rollout, RolloutSpec, RolloutState, Side};
use crate::domain::{ContentDigest, LabelName, Micros, PromptName};
use serde::{Deserialize, Serialize};

const KEY_ROLLOUTS: &[u8] = b"meta/rollouts";
const STORED_NAME_LIMIT: usize = 4096;

fn rollout_key(name: &PromptName, label: &LabelName) -> Vec<u8> {
    key(&[
        b"o/",
        name.as_str().as_bytes(),
        b"\0",
        label.as_str().as_bytes(),
    ])
}

#[derive(Serialize, Deserialize, Clone)]
pub struct SpecRec {
    steps_bp: Vec<u32>,
    bake_secs: u64,
    guardrails: Vec<(String, f64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_error_rate_increase: Option<f64>,
    min_samples: u64,
    max_extensions: u32,
    #[serde(default)]
    pause_when_inconclusive: bool,
    salt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sticky_by: Option<String>,
}

impl From<&RolloutSpec> for SpecRec {
    fn from(s: &RolloutSpec) -> Self {
        SpecRec {
            steps_bp: s.steps_bp.clone(),
            bake_secs: s.bake_secs,
            guardrails: s
                .guardrails
                .iter()
                .map(|g| (g.metric.as_str().to_string(), g.max))
                .collect(),
            max_error_rate_increase: s.max_error_rate_increase,
            min_samples: s.min_samples,
            max_extensions: s.max_extensions,
            pause_when_inconclusive: s.pause_when_inconclusive,
            salt: s.salt.clone(),
            sticky_by: s.sticky_by.clone(),
        }
    }
}

impl SpecRec {
    pub fn into_domain(self) -> std::result::Result<RolloutSpec, String> {
        let guardrails = self
            .guardrails
            .into_iter()
            .map(|(metric, max)| {
                Metric::parse(&metric)
                    .map(|metric| Guardrail { metric, max })
                    .ok_or_else(|| format!("unknown guardrail metric {metric:?}"))
            })
            .collect::<std::result::Result<_, _>>()?;
        Ok(RolloutSpec {
            steps_bp: self.steps_bp,
            bake_secs: self.bake_secs,
            guardrails,
            max_error_rate_increase: self.max_error_rate_increase,
            min_samples: self.min_samples,
            max_extensions: self.max_extensions,
            pause_when_inconclusive: self.pause_when_inconclusive,
            salt: self.salt,
            sticky_by: self.sticky_by,
        })
    }
}

#[derive(Serialize, Deserialize, Clone)]
pub struct RolloutRec {
    id: u64,
    name: String,
    label: String,
    stable: (u64, String),
    candidate: (u64, String),
    state: String,
    step: u32,
    weight_bp: u32,
    previous_weight_bp: u32,
    spec: SpecRec,
    extensions: u32,
    step_started: Micros,
    started_by: String,
    started_at: Micros,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_id: Option<u64>,
}

impl From<&Rollout> for RolloutRec {
    fn from(r: &Rollout) -> Self {
        RolloutRec {
            id: r.id,
            name: r.name.to_string(),
            label: r.label.to_string(),
            stable: (r.stable.version, r.stable.digest.to_string()),
            candidate: (r.candidate.version, r.candidate.digest.to_string()),
            state: r.state.as_str().to_string(),
            step: r.step,
            weight_bp: r.weight_bp,
            previous_weight_bp: r.previous_weight_bp,
            spec: SpecRec::from(&r.spec),
            extensions: r.extensions,
            step_started: r.step_started,
            started_by: r.started_by.clone(),
            started_at: r.started_at,
            request_id: r.request_id,
        }
    }
}

impl RolloutRec {
    pub fn into_domain(self) -> std::result::Result<Rollout, String> {
        let side = |(version, digest): (u64, String)| {
            ContentDigest::parse("digest", &digest)
                .map(|digest| Side { version, digest })
                .map_err(|e| e.to_string())
        };
        Ok(Rollout {
            id: self.id,
            name: PromptName::parse("name", &self.name, STORED_NAME_LIMIT)
                .map_err(|e| e.to_string())?,
            label: LabelName::parse("label", &self.label).map_err(|e| e.to_string())?,
            stable: side(self.stable)?,
            candidate: side(self.candidate)?,
            state: RolloutState::parse(&self.state)
                .ok_or_else(|| format!("unknown rollout state {:?}", self.state))?,
            step: self.step,
            weight_bp: self.weight_bp,
            previous_weight_bp: self.previous_weight_bp,
            spec: self.spec.into_domain()?,
            extensions: self.extensions,
            step_started: self.step_started,
            started_by: self.started_by,
            started_at: self.started_at,
            request_id: self.request_id,
        })
    }
}

impl Store {
    /// The label's newest rollout, running or ended.
    pub fn rollout(&self, name: &PromptName, label: &LabelName) -> Result<Option<Rollout>> {
        let key = rollout_key(name, label);
        let Some(raw) = self.engine.get(&key)? else {
            return Ok(None);
        };
        let rec: RolloutRec = decode(&key, &raw)?;
        rec.into_domain().map(Some).map_err(|e| corrupt(&key, e))
    }

    /// Every label's newest rollout.
    pub fn rollouts(&self) -> Result<Vec<Rollout>> {
        self.entries(b"o/")?
            .into_iter()
            .map(|(key, raw)| {
                let rec: RolloutRec = decode(&key, &raw)?;
                rec.into_domain().map_err(|e| corrupt(&key, e))
            })
            .collect()
    }

    /// The id the next rollout gets.
    pub fn next_rollout_id(&self) -> Result<u64> {
        Ok(self
            .engine
            .get(KEY_ROLLOUTS)?
            .map(|raw| read_u64(KEY_ROLLOUTS, &raw))
            .transpose()?
            .unwrap_or(0)
            + 1)
    }

    /// The rollout's writes in a revision's batch: its record, and the id
    /// counter when it is new.
    pub(super) fn put_rollout(&self, batch: &mut Batch, rollout: &Rollout) -> Result<()> {
        if rollout.id >= self.next_rollout_id()? {
            batch.put(KEY_ROLLOUTS, rollout.id.to_be_bytes());
        }
        batch.put(
            rollout_key(&rollout.name, &rollout.label),
            encode(&RolloutRec::from(rollout)),
        );
        Ok(())
    }
}
