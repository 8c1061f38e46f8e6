//! GetVersion, the resolve path: from memory on the async worker when both
//! caches have the answer, otherwise from the store off the workers; an
//! agent resolving a label under rollout gets its own arm's version.

use super::access::{authorize, take_principal};
use super::convert::{self, label_name, prompt_name};
use super::pb;
use super::service::annotate;
use crate::domain::access::{Action, Scope};
use crate::domain::validate::version_number;
use crate::domain::ContentDigest;
use crate::registry::{Registry, VersionSelector};
use prost::Message as _;
use tonic::{Request, Status};

pub async fn get_version(
    registry: &Registry,
    mut request: Request<pb::GetVersionRequest>,
) -> Result<super::wire::GetVersionFrame, Status> {
    let principal = take_principal(&mut request)?;
    let req = request.into_inner();
    let name = prompt_name(&req.name, registry.limits())?;
    authorize(&principal, Action::ReadContent, Scope::Prompt(&name))?;
    use pb::get_version_request::Selector;
    let selector = match req.selector.clone() {
        None => VersionSelector::Label(crate::domain::LabelName::latest()),
        Some(Selector::Version(n)) => VersionSelector::Number(version_number("version", n)?),
        Some(Selector::Digest(d)) => VersionSelector::Digest(ContentDigest::parse("digest", &d)?),
        Some(Selector::Label(l)) => VersionSelector::Label(label_name(&l)?),
    };
    let label = match &selector {
        VersionSelector::Label(label) => Some(label.to_string()),
        _ => None,
    };
    let arm = super::rollout::agent_selector(registry, &name, &selector, &req)?;
    let selector = arm.as_ref().map_or(selector, |(_, _, s)| s.clone());
    let revision = registry.revision();
    let version = match registry.cached_version(&name, &selector) {
        Some(version) => version,
        None => {
            let (name, selector) = (name.clone(), selector.clone());
            registry
                .off_runtime(move |r| r.get_version(&name, &selector))
                .await?
        }
    };
    annotate(
        name.as_str(),
        version.number,
        Some(&version.digest),
        label.as_deref(),
        None,
    );
    let encoded =
        version.encoded_with(|v| convert::version(v.clone(), true).encode_to_vec().into());
    let frame = super::wire::GetVersionFrame::new(encoded, revision);
    Ok(match arm {
        Some((rollout_id, arm, _)) => frame.with_rollout(rollout_id, arm),
        None => frame,
    })
}
