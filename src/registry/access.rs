//! Tokens: creating, revoking and listing them, and turning a presented
//! secret or a verified client certificate into a [`Principal`].
//!
//! Tokens live in the store (`t/{name}`, the secret's SHA-256 only) and,
//! for the request path, in memory: a map from hash to token, read under a
//! read lock with no storage call, so authenticating costs one SHA-256 and
//! one lookup. A certificate grant is a token without a secret, kept in the
//! same map under `cert:{name}`; a certificate is matched against the
//! grants by subject (a scan of the grants, which number in the tens). Creating and revoking a token is a write like any other
//! (under the writer lock, with its ledger entry, durable before the
//! answer); the map changes only after the store did. A revocation also
//! bumps a counter every open watch stream listens to, so a stream opened
//! with a revoked token ends at once.

use super::{Registry, RegistryError, Result};
use crate::domain::access::{check_token_name, Binding, Credential, Principal, Role, Token};
use crate::domain::{Micros, ValidationError};
use crate::provenance::{generate_token, is_well_formed, token_hash};
use crate::store::Store;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

/// The name of the token made on first start.
pub const BOOTSTRAP_TOKEN: &str = "admin";
/// Where that token's secret is written, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Why a caller could not be authenticated. The messages say what to send,
/// never which tokens exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this server requires a token: send `authorization: Bearer <token>` (promptreg: --token, PROMPTREG_TOKEN or --token-file)")]
    Missing,
    #[error("the authorization header is not `Bearer prt_…` with a well-formed promptreg token")]
    Malformed,
    /// Unknown, expired and revoked tokens answer alike.
    #[error("the token is not valid: unknown, expired or revoked")]
    Invalid,
    #[error("the grant of this client certificate is expired or revoked")]
    CertificateRevoked,
}

/// What the grants for one certificate subject say at a time.
enum Grant<'a> {
    /// No grant names the subject: it may do nothing.
    None,
    /// A grant in force (there is at most one).
    InForce(&'a Known),
    /// Grants name it, all revoked or expired.
    Lapsed,
}

/// The one rule for a certificate subject's grants, used to authenticate,
/// to end open streams and to refuse a second grant.
fn certificate_grant<'a>(
    map: &'a HashMap<String, Arc<Known>>,
    subject: &str,
    now: Micros,
) -> Grant<'a> {
    let mut grant = Grant::None;
    for known in map
        .values()
        .filter(|k| k.token.subject.as_deref() == Some(subject))
    {
        if known.token.valid_at(now) {
            return Grant::InForce(known);
        }
        grant = Grant::Lapsed;
    }
    grant
}

/// Where a token is in the in-memory map.
fn key_of(token: &Token) -> String {
    match &token.subject {
        Some(_) => format!("cert:{}", token.name),
        None => token.hash.clone(),
    }
}

/// A token the server knows, with when it was last used (since start).
struct Known {
    token: Token,
    last_used: AtomicI64,
}

/// The in-memory side of access: every token by hash, and the revocation
/// counter.
pub(super) struct Access {
    enabled: bool,
    by_hash: RwLock<HashMap<String, Arc<Known>>>,
    revocations: tokio::sync::watch::Sender<u64>,
}

impl Access {
    pub(super) fn load(
        store: &Store,
        enabled: bool,
    ) -> std::result::Result<Access, crate::store::StoreError> {
        let by_hash = store
            .tokens()?
            .into_iter()
            .map(|token| {
                let known = Known {
                    token,
                    last_used: AtomicI64::new(0),
                };
                (key_of(&known.token), Arc::new(known))
            })
            .collect();
        Ok(Access {
            enabled,
            by_hash: RwLock::new(by_hash),
            revocations: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Reloads every token from the store (another server on the same
    /// cluster store created or revoked one), and has every open watch
    /// check its principal again.
    pub(super) fn refresh(
        &self,
        store: &Store,
    ) -> std::result::Result<(), crate::store::StoreError> {
        let tokens = store.tokens()?;
        let keep: std::collections::HashSet<String> = tokens.iter().map(key_of).collect();
        self.by_hash
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| keep.contains(key));
        for token in tokens {
            self.put(token);
        }
        self.revocations.send_modify(|n| *n += 1);
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Known>>> {
        self.by_hash.read().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, token: Token) {
        let mut map = self.by_hash.write().unwrap_or_else(|e| e.into_inner());
        let key = key_of(&token);
        let last_used = map
            .get(&key)
            .map_or(0, |k| k.last_used.load(Ordering::Relaxed));
        map.insert(
            key,
            Arc::new(Known {
                token,
                last_used: AtomicI64::new(last_used),
            }),
        );
    }
}

/// A token as `tokens list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenListing {
    pub token: Token,
    /// When it last authenticated a request since the server started; 0:
    /// not since then.
    pub last_used: Micros,
}

/// What creating a token asks for.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    /// Set: a grant for the clients whose certificate names this (mTLS),
    /// with no secret.
    pub subject: Option<String>,
    pub bindings: Vec<Binding>,
    pub expires: Option<Micros>,
}

impl Registry {
    /// Whether requests must authenticate (`--insecure-no-auth` is off).
    pub fn auth_enabled(&self) -> bool {
        self.inner.access.enabled
    }

    /// The principal of a bearer token (`authorization` metadata, already
    /// stripped of `Bearer `), else of the verified client certificate's
    /// principal (`certificate`, mTLS), or why not. No storage call.
    ///
    /// A certificate without a grant authenticates with no role at all, so
    /// each request is denied naming the role it needs.
    pub fn authenticate(
        &self,
        secret: Option<&str>,
        certificate: Option<&str>,
    ) -> std::result::Result<Principal, AuthError> {
        if !self.inner.access.enabled {
            return Ok(Principal::anonymous());
        }
        let secret = match (secret, certificate) {
            (Some(secret), _) => secret,
            (None, Some(subject)) => return self.authenticate_certificate(subject),
            (None, None) => return Err(AuthError::Missing),
        };
        if !is_well_formed(secret) {
            return Err(AuthError::Malformed);
        }
        let hash = token_hash(secret);
        let now = crate::time::now_micros();
        let map = self.inner.access.read();
        let known = map.get(&hash).ok_or(AuthError::Invalid)?;
        if !known.token.valid_at(now) {
            return Err(AuthError::Invalid);
        }
        known.last_used.store(now, Ordering::Relaxed);
        Ok(Principal {
            name: known.token.name.clone(),
            credential: Credential::Token,
            bindings: known.token.bindings.clone(),
        })
    }

    fn authenticate_certificate(&self, subject: &str) -> std::result::Result<Principal, AuthError> {
        let now = crate::time::now_micros();
        let map = self.inner.access.read();
        let bindings = match certificate_grant(&map, subject, now) {
            Grant::InForce(known) => {
                known.last_used.store(now, Ordering::Relaxed);
                known.token.bindings.clone()
            }
            Grant::Lapsed => return Err(AuthError::CertificateRevoked),
            Grant::None => Vec::new(),
        };
        Ok(Principal {
            name: subject.to_string(),
            credential: Credential::Certificate,
            bindings,
        })
    }

    /// Whether `principal` still holds: a principal whose token or
    /// certificate grant was revoked (or expired) no longer does. The
    /// anonymous principal always holds.
    pub fn still_valid(&self, principal: &Principal) -> bool {
        let now = crate::time::now_micros();
        let map = self.inner.access.read();
        match principal.credential {
            Credential::Anonymous => true,
            Credential::Token => map.values().any(|k| {
                k.token.subject.is_none() && k.token.name == principal.name && k.token.valid_at(now)
            }),
            Credential::Certificate => {
                !matches!(certificate_grant(&map, &principal.name, now), Grant::Lapsed)
            }
        }
    }

    /// Completes when `principal` stops being valid (its token revoked), to
    /// end the watch streams it opened. Pending forever for principals that
    /// cannot be revoked.
    pub fn revoked(&self, principal: &Principal) -> impl Future<Output = ()> + Send + 'static {
        let registry = self.clone();
        let principal = principal.clone();
        let mut revocations = self.inner.access.revocations.subscribe();
        async move {
            if principal.credential == Credential::Anonymous {
                return std::future::pending().await;
            }
            loop {
                if !registry.still_valid(&principal) {
                    return;
                }
                if revocations.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }

    /// Creates a token; the answer holds the secret, the only time it is
    /// ever shown (empty for a certificate grant). Refused when a token of
    /// that name exists (revoked ones too: names in the ledger stay
    /// unambiguous), or a grant for that certificate subject does.
    pub async fn create_token(&self, by: &Principal, new: NewToken) -> Result<(Token, String)> {
        check_token_name("name", &new.name)?;
        if let Some(subject) = &new.subject {
            crate::domain::access::check_subject("subject", subject)?;
        }
        if new.bindings.is_empty() {
            return Err(
                ValidationError::new("bindings", "at least one role binding is required").into(),
            );
        }
        let now = crate::time::now_micros();
        if let Some(expires) = new.expires {
            if expires <= now {
                return Err(ValidationError::new("expires", "must be in the future").into());
            }
        }
        let secret = match new.subject {
            Some(_) => String::new(),
            None => generate_token()?,
        };
        self.insert_token(by, new, secret).await
    }

    async fn insert_token(
        &self,
        by: &Principal,
        new: NewToken,
        secret: String,
    ) -> Result<(Token, String)> {
        let actor = by.name.clone();
        let token = self
            .write(move |this| {
                let writer = this.lock_writer();
                if this.find_token(&new.name).is_some() {
                    return Err(RegistryError::FailedPrecondition(format!(
                        "a token named {} exists already (revoked tokens keep their name); choose another name",
                        new.name
                    )));
                }
                if let Some(subject) = &new.subject {
                    let now = crate::time::now_micros();
                    let map = this.inner.access.read();
                    if matches!(certificate_grant(&map, subject, now), Grant::InForce(_)) {
                        return Err(RegistryError::FailedPrecondition(format!(
                            "a grant for the certificate {subject} is in force already; revoke it first"
                        )));
                    }
                }
                let (_, time) = writer.next();
                let hash = match new.subject {
                    Some(_) => String::new(),
                    None => token_hash(&secret),
                };
                let token = Token {
                    name: new.name,
                    hash,
                    subject: new.subject,
                    bindings: new.bindings,
                    created: time,
                    created_by: actor.clone(),
                    expires: new.expires,
                    revoked: None,
                };
                this.record_token((writer.head, time), &actor, "token_create", &token, "")?;
                Ok((token, secret))
            })
            .await?;
        self.store().flush().await?;
        self.inner.access.put(token.0.clone());
        Ok(token)
    }

    /// Revokes a token, at once: requests with it fail from now on and the
    /// watch streams opened with it end UNAUTHENTICATED.
    pub async fn revoke_token(
        &self,
        by: &Principal,
        name: String,
        reason: String,
    ) -> Result<Token> {
        check_token_name("name", &name)?;
        crate::domain::validate::optional_text(
            "reason",
            &reason,
            self.inner.limits.max_text_bytes,
        )?;
        let actor = by.name.clone();
        let token = self
            .write(move |this| {
                let writer = this.lock_writer();
                let Some(mut token) = this.find_token(&name) else {
                    return Err(RegistryError::NotFound(format!("no token is named {name}")));
                };
                if token.revoked.is_some() {
                    return Ok(token);
                }
                let (_, time) = writer.next();
                token.revoked = Some(time);
                this.record_token((writer.head, time), &actor, "token_revoke", &token, &reason)?;
                Ok(token)
            })
            .await?;
        self.store().flush().await?;
        self.inner.access.put(token.clone());
        self.inner.access.revocations.send_modify(|n| *n += 1);
        Ok(token)
    }

    /// Every token, by name, revoked ones included.
    pub fn list_tokens(&self) -> Vec<TokenListing> {
        let mut tokens: Vec<TokenListing> = self
            .inner
            .access
            .read()
            .values()
            .map(|k| TokenListing {
                token: k.token.clone(),
                last_used: k.last_used.load(Ordering::Relaxed),
            })
            .collect();
        tokens.sort_by(|a, b| a.token.name.cmp(&b.token.name));
        tokens
    }

    /// On a first start with authentication on and no token at all:
    /// creates the admin token and writes it to `DATA_DIR/admin.token`
    /// (mode 0600), returning that path. The file is written first, so a
    /// failure leaves no token that nobody holds; a stale file from an
    /// earlier failed start is replaced.
    pub async fn bootstrap_admin(&self) -> Result<Option<PathBuf>> {
        if !self.inner.access.enabled || !self.inner.access.read().is_empty() {
            return Ok(None);
        }
        let path = self.inner.data_dir.join(ADMIN_TOKEN_FILE);
        let secret = generate_token()?;
        let io_err = |e: std::io::Error| {
            RegistryError::Unwritable(format!("cannot write {}: {e}", path.display()))
        };
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(e)),
            _ => {}
        }
        crate::provenance::write_private(&path, format!("{secret}\n").as_bytes())
            .map_err(io_err)?;
        let system = Principal {
            name: "promptreg".to_string(),
            credential: Credential::Anonymous,
            bindings: vec![Binding::everywhere(Role::Admin)],
        };
        let new = NewToken {
            name: BOOTSTRAP_TOKEN.to_string(),
            subject: None,
            bindings: vec![Binding::everywhere(Role::Admin)],
            expires: None,
        };
        self.insert_token(&system, new, secret).await?;
        Ok(Some(path))
    }

    fn find_token(&self, name: &str) -> Option<Token> {
        self.inner
            .access
            .read()
            .values()
            .find(|k| k.token.name == name)
            .map(|k| k.token.clone())
    }

    /// Writes `token` with its ledger entry, under the writer lock, at
    /// `(head revision, time)`.
    fn record_token(
        &self,
        (revision, time): (u64, Micros),
        actor: &str,
        action: &str,
        token: &Token,
        reason: &str,
    ) -> Result<()> {
        let store = self.store();
        let entry = super::audit::token_change(
            &store.ledger_head()?,
            revision,
            time,
            actor,
            action,
            token,
            reason,
        );
        store.put_token(token, &entry)?;
        Ok(())
    }
}
