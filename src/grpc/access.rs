//! Access on the wire: the interceptor that authenticates every request of
//! the registry service, the one authorization check the handlers call,
//! and the token RPCs.
//!
//! The interceptor reads `authorization: Bearer <token>`, asks the registry
//! for the principal (an in-memory lookup) and puts it in the request's
//! extensions; a request without valid credentials never reaches a
//! handler. Each handler then calls [`authorize`] with the [`Action`] of
//! its RPC (the table in [`action_of`]) and the scope it touches.

use super::convert::label_name;
use super::pb;
use super::timestamp::to_timestamp;
use crate::domain::access::{Action, Binding, Credential, Principal, Role, Scope, Token};
use crate::domain::{Selector, ValidationError};
use crate::registry::{AuthError, NewToken, Registry, RegistryError, TokenListing};
use crate::telemetry::metrics as telemetry;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_stream::Stream;
use tonic::{Request, Status};

/// What the server knows of a TLS connection, on each of its requests:
/// the principal of its verified client certificate (mTLS).
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub subject: Option<std::sync::Arc<str>>,
}

/// Authenticates each request of the registry service.
#[derive(Clone)]
pub struct Authenticate {
    registry: Registry,
}

impl Authenticate {
    pub fn new(registry: Registry) -> Authenticate {
        Authenticate { registry }
    }
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata().get("authorization");
        let secret = match header {
            None => None,
            Some(value) => {
                let value = value
                    .to_str()
                    .map_err(|_| Status::from(AuthError::Malformed))?;
                let secret = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .ok_or_else(|| Status::from(AuthError::Malformed))?;
                Some(secret.trim())
            }
        };
        let certificate = request
            .extensions()
            .get::<TlsPeer>()
            .and_then(|peer| peer.subject.clone());
        match self.registry.authenticate(secret, certificate.as_deref()) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Ok(request)
            }
            Err(error) => {
                metrics::counter!(telemetry::UNAUTHENTICATED).increment(1);
                Err(error.into())
            }
        }
    }
}

/// The client side: sends `authorization: Bearer <token>` on every request
/// (nothing without a token).
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl Bearer {
    /// `None` when the token cannot travel in a header (not ASCII).
    pub fn new(token: Option<&str>) -> Option<Bearer> {
        match token {
            None => Some(Bearer(None)),
            Some(token) => format!("Bearer {}", token.trim())
                .parse()
                .ok()
                .map(|value| Bearer(Some(value))),
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A registry client that sends its token on every request.
pub type Client = pb::registry_client::RegistryClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Status {
        Status::unauthenticated(error.to_string())
    }
}

/// The principal the interceptor put on the request, taken out of it.
pub fn take_principal<T>(request: &mut Request<T>) -> Result<Principal, Status> {
    request
        .extensions_mut()
        .remove::<Principal>()
        .ok_or_else(|| Status::from(AuthError::Missing))
}

/// The one authorization check of the handlers: `principal` may do
/// `action` on `scope`, or PERMISSION_DENIED naming what was needed
/// (logged and counted where every error becomes a status).
pub fn authorize(principal: &Principal, action: Action, scope: Scope<'_>) -> Result<(), Status> {
    principal
        .authorize(action, scope)
        .map_err(|denied| RegistryError::Denied(denied).into())
}

/// A watch's selector narrowed to what `principal` may watch.
pub fn narrow_selector(principal: &Principal, selector: &mut Selector) -> Result<(), Status> {
    principal
        .narrow(Action::Watch, selector)
        .map_err(|denied| RegistryError::Denied(denied).into())
}

/// Whether `principal` may list under `prefix` (the listing is then
/// filtered to what it may see).
pub fn may_list(principal: &Principal, action: Action, prefix: &str) -> Result<(), Status> {
    principal
        .may_list(action, prefix)
        .map_err(|denied| RegistryError::Denied(denied).into())
}

/// `stream`, ended with UNAUTHENTICATED as soon as `revoked` completes
/// (the token that opened it was revoked).
pub fn until_revoked<S, T>(
    stream: S,
    revoked: impl Future<Output = ()> + Send + 'static,
) -> Revocable<S>
where
    S: Stream<Item = Result<T, Status>>,
{
    Revocable {
        stream: Box::pin(stream),
        revoked: Box::pin(revoked),
        done: false,
    }
}

/// A response stream that ends UNAUTHENTICATED when its credentials are
/// revoked; see [`until_revoked`].
pub struct Revocable<S> {
    stream: Pin<Box<S>>,
    revoked: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl<S, T> Stream for Revocable<S>
where
    S: Stream<Item = Result<T, Status>>,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.revoked.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(Status::unauthenticated(
                "the token this stream was opened with was revoked",
            ))));
        }
        let next = self.stream.as_mut().poll_next(cx);
        if matches!(next, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.done = true;
        }
        next
    }
}

/// Which action each RPC is. Every RPC of the service is listed, so the
/// role table in the proto's `Role` comments is this match.
pub fn action_of(rpc: &str) -> Option<Action> {
    use Action::*;
    Some(match rpc {
        "GetVersion" | "ListPrompts" | "ListVersions" | "ListLabels" | "ResolveAt"
        | "ListSigningKeys" => ReadContent,
        "LabelHistory" | "DiffVersions" | "FindByDigest" | "FleetStatus" | "ListAudit"
        | "VerifyAudit" => Inspect,
        "Watch" | "WatchMany" => Watch,
        "AckApplied" => Ack,
        "WhoAmI" => Identify,
        "PublishVersion" => Publish,
        "SetLabel" | "Rollback" | "RemoveLabel" => MoveLabel,
        "ListChecks" | "ListAttesters" | "GetPolicy" | "ListPolicies" | "ListFreezes"
        | "ListRequests" => Inspect,
        "AttestVersion" => Attest,
        "ApproveRequest" | "RejectRequest" => Approve,
        "RotateSigningKey" | "CreateCheckpoint" | "PruneVersions" | "Backup" | "CreateToken"
        | "ListTokens" | "RevokeToken" | "AddAttester" | "RemoveAttester" | "SetPolicy"
        | "DeletePolicy" | "FreezeLabel" | "UnfreezeLabel" => Administer,
        _ => return None,
    })
}

// --- conversions --------------------------------------------------------------

fn role_to_pb(role: Role) -> pb::Role {
    match role {
        Role::Reader => pb::Role::Reader,
        Role::Agent => pb::Role::Agent,
        Role::Author => pb::Role::Author,
        Role::Deployer => pb::Role::Deployer,
        Role::Attester => pb::Role::Attester,
        Role::Approver => pb::Role::Approver,
        Role::Admin => pb::Role::Admin,
    }
}

fn role_from_pb(field: &str, raw: i32) -> Result<Role, ValidationError> {
    match pb::Role::try_from(raw) {
        Ok(pb::Role::Reader) => Ok(Role::Reader),
        Ok(pb::Role::Agent) => Ok(Role::Agent),
        Ok(pb::Role::Author) => Ok(Role::Author),
        Ok(pb::Role::Deployer) => Ok(Role::Deployer),
        Ok(pb::Role::Attester) => Ok(Role::Attester),
        Ok(pb::Role::Approver) => Ok(Role::Approver),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Unspecified) | Err(_) => Err(ValidationError::new(
            field,
            format!(
                "is {raw}; one of ROLE_READER, ROLE_AGENT, ROLE_AUTHOR, ROLE_DEPLOYER, ROLE_ATTESTER, ROLE_APPROVER, ROLE_ADMIN"
            ),
        )),
    }
}

pub fn binding_to_pb(binding: &Binding) -> pb::Binding {
    pb::Binding {
        role: role_to_pb(binding.role).into(),
        prefixes: binding.prefixes.clone(),
        labels: binding
            .labels
            .iter()
            .map(|l| l.as_str().to_string())
            .collect(),
    }
}

fn binding_from_pb(
    index: usize,
    binding: pb::Binding,
    max_name_bytes: usize,
) -> Result<Binding, ValidationError> {
    let within = |e: ValidationError| e.within(&format!("bindings[{index}]"));
    let role = role_from_pb("role", binding.role).map_err(within)?;
    let labels = binding
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            label_name(l).map_err(|e| ValidationError::new(format!("labels[{i}]"), e.rule))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(within)?;
    Binding::new(role, binding.prefixes, labels, max_name_bytes).map_err(within)
}

fn token_to_pb(token: &Token, last_used: i64) -> pb::TokenInfo {
    pb::TokenInfo {
        name: token.name.clone(),
        bindings: token.bindings.iter().map(binding_to_pb).collect(),
        created: Some(to_timestamp(token.created)),
        created_by: token.created_by.clone(),
        last_used: (last_used != 0).then(|| to_timestamp(last_used)),
        expires: token.expires.map(to_timestamp),
        revoked: token.revoked.map(to_timestamp),
        subject: token.subject.clone().unwrap_or_default(),
    }
}

fn credential_name(credential: &Credential) -> &'static str {
    match credential {
        Credential::Token => "token",
        Credential::Certificate => "certificate",
        Credential::Anonymous => "anonymous",
    }
}

// --- the token RPCs -----------------------------------------------------------

pub async fn create_token(
    registry: &Registry,
    mut request: Request<pb::CreateTokenRequest>,
) -> Result<pb::CreateTokenResponse, Status> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Administer, Scope::EveryPrompt)?;
    let r = request.into_inner();
    let max_name_bytes = registry.limits().max_name_bytes;
    let bindings = r
        .bindings
        .into_iter()
        .enumerate()
        .map(|(i, b)| binding_from_pb(i, b, max_name_bytes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(RegistryError::from)?;
    let expires = match &r.expires {
        Some(ts) => Some(super::convert::instant("expires", ts).map_err(RegistryError::from)?),
        None => None,
    };
    let new = NewToken {
        name: r.name,
        subject: (!r.subject.is_empty()).then_some(r.subject),
        bindings,
        expires,
    };
    let (token, secret) = registry.create_token(&principal, new).await?;
    tracing::info!(token = %token.name, by = %principal.name, "token created");
    Ok(pb::CreateTokenResponse {
        token: Some(token_to_pb(&token, 0)),
        secret,
    })
}

pub fn list_tokens(
    registry: &Registry,
    mut request: Request<pb::ListTokensRequest>,
) -> Result<pb::ListTokensResponse, Status> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Administer, Scope::EveryPrompt)?;
    let tokens = registry
        .list_tokens()
        .into_iter()
        .map(|TokenListing { token, last_used }| token_to_pb(&token, last_used))
        .collect();
    Ok(pb::ListTokensResponse { tokens })
}

pub async fn revoke_token(
    registry: &Registry,
    mut request: Request<pb::RevokeTokenRequest>,
) -> Result<pb::RevokeTokenResponse, Status> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Administer, Scope::EveryPrompt)?;
    let r = request.into_inner();
    let token = registry.revoke_token(&principal, r.name, r.reason).await?;
    tracing::warn!(token = %token.name, by = %principal.name, "token revoked");
    Ok(pb::RevokeTokenResponse {
        token: Some(token_to_pb(&token, 0)),
    })
}

pub fn who_am_i(mut request: Request<pb::WhoAmIRequest>) -> Result<pb::WhoAmIResponse, Status> {
    let principal = take_principal(&mut request)?;
    authorize(&principal, Action::Identify, Scope::Service)?;
    Ok(pb::WhoAmIResponse {
        principal: principal.name.clone(),
        credential: credential_name(&principal.credential).to_string(),
        bindings: principal.bindings.iter().map(binding_to_pb).collect(),
    })
}
