//! Who may do what: roles, the bindings that scope them, principals, and
//! the one rule that decides every request.
//!
//! A role is a fixed set of actions. A binding gives a role over name
//! prefixes (none: every prompt) and, for `deployer`, optionally over a set
//! of labels (none: every label). A principal holds one or more bindings
//! and may do an action on a prompt (and label) when one binding allows
//! it. Everything else is denied. The denial names the role and scope the
//! request needed, never what else exists.

use super::{LabelName, Micros, PromptName, Selector, ValidationError};
use std::fmt;

/// Longest token name, in bytes.
pub const MAX_TOKEN_NAME_BYTES: usize = 64;

/// A token's name: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or a
/// digit. It is what the audit ledger records as the actor.
pub fn check_token_name(field: &str, raw: &str) -> Result<(), ValidationError> {
    let fine = raw
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    check_text(field, raw, MAX_TOKEN_NAME_BYTES, fine, || {
        format!("a token name: 1 to {MAX_TOKEN_NAME_BYTES} of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
    })
}

/// Longest certificate subject a grant may name, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 512;

/// A certificate grant's subject: a URI or DNS SAN or a CN, 1 to 512
/// printable ASCII characters without spaces.
pub fn check_subject(field: &str, raw: &str) -> Result<(), ValidationError> {
    let fine = raw.bytes().all(|b| b.is_ascii_graphic());
    check_text(field, raw, MAX_SUBJECT_BYTES, fine, || {
        format!("a certificate principal: 1 to {MAX_SUBJECT_BYTES} printable ASCII characters, no spaces (a URI SAN such as spiffe://prod/agent, a DNS SAN or a CN)")
    })
}

/// `raw` is 1 to `max` bytes and `fine`, or the error saying it is not
/// `what`.
fn check_text(
    field: &str,
    raw: &str,
    max: usize,
    fine: bool,
    what: impl FnOnce() -> String,
) -> Result<(), ValidationError> {
    if fine && !raw.is_empty() && raw.len() <= max {
        return Ok(());
    }
    Err(ValidationError::new(
        field,
        format!("{raw:?} is not {}", what()),
    ))
}

/// A grant of roles, as the registry keeps it: to the holder of a bearer
/// token (by the secret's hash, never the secret), or to the clients whose
/// certificate names `subject` (mTLS; no secret at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    /// SHA-256 of the secret, lower-case hex; empty for a certificate grant.
    pub hash: String,
    /// For a certificate grant: the certificate principal it is for (a URI
    /// or DNS SAN, or a CN), recorded as the actor of what it does.
    pub subject: Option<String>,
    pub bindings: Vec<Binding>,
    pub created: Micros,
    /// The principal that created it.
    pub created_by: String,
    pub expires: Option<Micros>,
    pub revoked: Option<Micros>,
}

impl Token {
    /// The name recorded as the actor of what its holder does.
    pub fn principal_name(&self) -> &str {
        self.subject.as_deref().unwrap_or(&self.name)
    }

    /// Whether the token authenticates at `now`.
    pub fn valid_at(&self, now: Micros) -> bool {
        self.revoked.is_none() && self.expires.is_none_or(|expires| now < expires)
    }
}

/// The roles, from least to most. Each includes what the ones before it in
/// its line allow: `reader` ⊂ `author` ⊂ `deployer` ⊂ `admin`; `agent` is
/// the reads an agent needs plus watching and acknowledging; `attester`
/// (a CI job recording check results) and `approver` (a reviewer of
/// promotion requests) are a reader plus that one thing, so that neither
/// can move a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Reader,
    Agent,
    Author,
    Deployer,
    Attester,
    Approver,
    Admin,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Reader,
        Role::Agent,
        Role::Author,
        Role::Deployer,
        Role::Attester,
        Role::Approver,
        Role::Admin,
    ];

    pub fn parse(field: &str, raw: &str) -> Result<Role, ValidationError> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == raw)
            .ok_or_else(|| {
                ValidationError::new(
                    field,
                    format!("unknown role {raw:?}; one of reader, agent, author, deployer, attester, approver, admin"),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Agent => "agent",
            Role::Author => "author",
            Role::Deployer => "deployer",
            Role::Attester => "attester",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    /// Whether this role includes `action`.
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Admin => true,
            Role::Agent => matches!(action, ReadContent | Watch | Ack | Identify),
            Role::Reader => matches!(action, ReadContent | Inspect | Identify),
            Role::Author => matches!(action, ReadContent | Inspect | Identify | Publish),
            Role::Deployer => {
                matches!(
                    action,
                    ReadContent | Inspect | Identify | Publish | MoveLabel
                )
            }
            Role::Attester => matches!(action, ReadContent | Inspect | Identify | Attest),
            Role::Approver => matches!(action, ReadContent | Inspect | Identify | Approve),
        }
    }

    /// The least role that allows `action`, for a denial's message.
    pub fn least_for(action: Action) -> Role {
        Role::ALL
            .into_iter()
            .find(|role| role.allows(action))
            .unwrap_or(Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request does, as far as access is concerned. Every RPC is one of
/// these (the table is in `grpc/access.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read versions and where labels point: get, list, resolve, the
    /// public signing keys.
    ReadContent,
    /// Look into the registry's records: history, diffs, whois, fleet
    /// status, the audit ledger and its verification.
    Inspect,
    /// Open a watch.
    Watch,
    /// Report what an agent applied.
    Ack,
    /// Ask who one is.
    Identify,
    /// Publish a version.
    Publish,
    /// Promote, roll back or remove a label.
    MoveLabel,
    /// Record a check result for a version.
    Attest,
    /// Approve or reject a promotion request.
    Approve,
    /// Everything else: tokens, signing keys, checkpoints, prune, backup,
    /// attester keys, policies, freezes.
    Administer,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::ReadContent,
        Action::Inspect,
        Action::Watch,
        Action::Ack,
        Action::Identify,
        Action::Publish,
        Action::MoveLabel,
        Action::Attest,
        Action::Approve,
        Action::Administer,
    ];

    /// Whether a binding's labels narrow it: moving a label, and approving
    /// a move of one.
    fn is_about_a_label(self) -> bool {
        matches!(self, Action::MoveLabel | Action::Approve)
    }

    /// What a denial says the caller tried.
    pub fn describe(self) -> &'static str {
        match self {
            Action::ReadContent => "reading",
            Action::Inspect => "inspecting",
            Action::Watch => "watching",
            Action::Ack => "acknowledging",
            Action::Identify => "asking who you are",
            Action::Publish => "publishing",
            Action::MoveLabel => "moving a label",
            Action::Attest => "recording a check result",
            Action::Approve => "reviewing a promotion request",
            Action::Administer => "administering",
        }
    }
}

/// A role over a scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    pub role: Role,
    /// Name prefixes the role covers; empty: every prompt.
    pub prefixes: Vec<String>,
    /// For `deployer` and `approver`: the labels it may move or approve
    /// moves of; empty: every label.
    pub labels: Vec<LabelName>,
}

impl Binding {
    /// A role over every prompt and label.
    pub fn everywhere(role: Role) -> Binding {
        Binding {
            role,
            prefixes: Vec::new(),
            labels: Vec::new(),
        }
    }

    /// A binding from its parts, checked: prefixes are name prefixes, and
    /// labels narrow only a `deployer`.
    pub fn new(
        role: Role,
        prefixes: Vec<String>,
        labels: Vec<LabelName>,
        max_name_bytes: usize,
    ) -> Result<Binding, ValidationError> {
        for (i, prefix) in prefixes.iter().enumerate() {
            if prefix.is_empty() {
                return Err(ValidationError::new(
                    format!("prefixes[{i}]"),
                    "must not be empty (leave out every prefix for every prompt)",
                ));
            }
            PromptName::check_prefix(&format!("prefixes[{i}]"), prefix, max_name_bytes)?;
        }
        if !labels.is_empty() && !matches!(role, Role::Deployer | Role::Approver) {
            return Err(ValidationError::new(
                "labels",
                format!("only a deployer or approver binding is narrowed by labels, not {role}"),
            ));
        }
        Ok(Binding {
            role,
            prefixes,
            labels,
        })
    }

    /// Whether the binding covers every prompt.
    pub fn covers_every_prompt(&self) -> bool {
        self.prefixes.is_empty()
    }

    fn covers_prompt(&self, name: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    fn covers_label(&self, label: &LabelName) -> bool {
        self.labels.is_empty() || self.labels.contains(label)
    }

    /// Whether the binding covers every name that starts with `prefix`.
    fn covers_prefix(&self, prefix: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| prefix.starts_with(p.as_str()))
    }

    fn allows(&self, action: Action, scope: &Scope<'_>) -> bool {
        if !self.role.allows(action) {
            return false;
        }
        match scope {
            Scope::Service => true,
            Scope::EveryPrompt => self.covers_every_prompt(),
            Scope::Prompt(name) => self.covers_prompt(name.as_str()),
            Scope::Prefix(prefix) => self.covers_prefix(prefix),
            Scope::Label(name, label) => {
                self.covers_prompt(name.as_str())
                    && (!action.is_about_a_label() || self.covers_label(label))
            }
        }
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.role)?;
        if self.prefixes.is_empty() {
            f.write_str(" on every prompt")?;
        } else {
            write!(f, " on {}", self.prefixes.join(", "))?;
        }
        if !self.labels.is_empty() {
            let labels: Vec<&str> = self.labels.iter().map(LabelName::as_str).collect();
            write!(f, " for label {}", labels.join(", "))?;
        }
        Ok(())
    }
}

/// What a request touches.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Nothing about any prompt (the public signing keys, who am I): any
    /// binding of a role that allows the action will do.
    Service,
    /// Every prompt at once (the whole ledger, a backup).
    EveryPrompt,
    /// Every prompt whose name starts with this.
    Prefix(&'a str),
    /// One prompt.
    Prompt(&'a PromptName),
    /// One label of one prompt.
    Label(&'a PromptName, &'a LabelName),
}

/// How a caller was identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A bearer token, by its name.
    Token,
    /// A client certificate (mTLS), by its SAN or CN.
    Certificate,
    /// Authentication is off (`--insecure-no-auth`).
    Anonymous,
}

/// An authenticated caller: the name recorded as the actor of what it
/// does, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub credential: Credential,
    pub bindings: Vec<Binding>,
}

/// A request the principal may not make; the message names what it needed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{principal} may not do this: {what} needs {needed}")]
pub struct Denied {
    pub principal: String,
    pub what: String,
    pub needed: String,
}

impl Principal {
    /// The caller when authentication is off: an admin, recorded as
    /// `anonymous`.
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".to_string(),
            credential: Credential::Anonymous,
            bindings: vec![Binding::everywhere(Role::Admin)],
        }
    }

    /// Whether one of the principal's bindings allows `action` on `scope`.
    pub fn may(&self, action: Action, scope: Scope<'_>) -> bool {
        self.bindings.iter().any(|b| b.allows(action, &scope))
    }

    /// The one check of every request: allowed, or a denial naming the
    /// least role and the scope the request needed.
    pub fn authorize(&self, action: Action, scope: Scope<'_>) -> Result<(), Denied> {
        if self.may(action, scope) {
            return Ok(());
        }
        let role = Role::least_for(action);
        let needed = match scope {
            Scope::Service => role.to_string(),
            Scope::EveryPrompt => format!("{role} on every prompt"),
            Scope::Prefix(prefix) => format!("{role} on {prefix}"),
            Scope::Prompt(name) => format!("{role} on {name}"),
            Scope::Label(name, label) if action.is_about_a_label() => {
                format!("{role} on {name} for label {label}")
            }
            Scope::Label(name, _) => format!("{role} on {name}"),
        };
        Err(Denied {
            principal: self.name.clone(),
            what: action.describe().to_string(),
            needed,
        })
    }

    /// Narrows a watch selector to what the principal may watch: an empty
    /// selector (every prompt) becomes the prefixes it may watch; a name or
    /// prefix asked for explicitly must be allowed, or the watch is denied.
    pub fn narrow(&self, action: Action, selector: &mut Selector) -> Result<(), Denied> {
        self.authorize(action, Scope::Service)?;
        let Some(allowed) = self.prefixes_for(action) else {
            return Ok(());
        };
        if selector.names.is_empty() && selector.prefixes.is_empty() {
            selector.prefixes = allowed;
            return Ok(());
        }
        for name in &selector.names {
            self.authorize(action, Scope::Prompt(name))?;
        }
        for prefix in &selector.prefixes {
            self.authorize(action, Scope::Prefix(prefix))?;
        }
        Ok(())
    }

    /// Whether a listing under `prefix` (empty: every prompt) may be asked
    /// for: when the principal may see only part of it, the listing is
    /// filtered; when it may see none of it, the request is denied.
    pub fn may_list(&self, action: Action, prefix: &str) -> Result<(), Denied> {
        self.authorize(action, Scope::Service)?;
        if prefix.is_empty() || self.may(action, Scope::Prefix(prefix)) {
            return Ok(());
        }
        match self.prefixes_for(action) {
            Some(allowed) if allowed.iter().any(|p| p.starts_with(prefix)) => Ok(()),
            _ => self.authorize(action, Scope::Prefix(prefix)),
        }
    }

    /// The name prefixes under which the principal may do `action`; `None`
    /// when it may on every prompt. Used to narrow a listing or a watch of
    /// "everything" to what the principal may see.
    pub fn prefixes_for(&self, action: Action) -> Option<Vec<String>> {
        let mut prefixes = Vec::new();
        for binding in self.bindings.iter().filter(|b| b.role.allows(action)) {
            if binding.covers_every_prompt() {
                return None;
            }
            prefixes.extend(binding.prefixes.iter().cloned());
        }
        prefixes.sort();
        prefixes.dedup();
        Some(prefixes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> PromptName {
        PromptName::parse("name", s, 128).unwrap()
    }

    fn label(s: &str) -> LabelName {
        LabelName::parse("label", s).unwrap()
    }

    fn principal(bindings: Vec<Binding>) -> Principal {
        Principal {
            name: "ci".into(),
            credential: Credential::Token,
            bindings,
        }
    }

    #[test]
    fn roles_nest_as_documented() {
        use Action::*;
        let all = Action::ALL;
        let allowed = |role: Role| -> Vec<Action> {
            all.iter().copied().filter(|a| role.allows(*a)).collect()
        };
        assert_eq!(allowed(Role::Reader), [ReadContent, Inspect, Identify]);
        assert_eq!(allowed(Role::Agent), [ReadContent, Watch, Ack, Identify]);
        assert_eq!(
            allowed(Role::Author),
            [ReadContent, Inspect, Identify, Publish]
        );
        assert_eq!(
            allowed(Role::Deployer),
            [ReadContent, Inspect, Identify, Publish, MoveLabel]
        );
        assert_eq!(allowed(Role::Admin), all);
    }

    #[test]
    fn a_deployer_on_a_prefix_for_one_label() {
        let binding = Binding::new(
            Role::Deployer,
            vec!["support/".into()],
            vec![label("staging")],
            128,
        )
        .unwrap();
        let p = principal(vec![binding]);
        let refund = name("support/refund");
        let other = name("sales/pitch");
        assert!(p.may(Action::MoveLabel, Scope::Label(&refund, &label("staging"))));
        let denied = p
            .authorize(
                Action::MoveLabel,
                Scope::Label(&refund, &label("production")),
            )
            .unwrap_err();
        assert_eq!(
            denied.to_string(),
            "ci may not do this: moving a label needs deployer on support/refund for label production"
        );
        assert!(!p.may(Action::MoveLabel, Scope::Label(&other, &label("staging"))));
        // The label narrows only moves: reading production is fine.
        assert!(p.may(
            Action::ReadContent,
            Scope::Label(&refund, &label("production"))
        ));
        assert!(p.may(Action::Publish, Scope::Prompt(&refund)));
        assert!(!p.may(Action::Inspect, Scope::EveryPrompt));
        assert!(p.may(Action::Inspect, Scope::Prefix("support/faq")));
        assert!(!p.may(Action::Inspect, Scope::Prefix("sup")));
        assert!(!p.may(Action::Watch, Scope::Prompt(&refund)));
    }

    #[test]
    fn several_bindings_add_up_and_prefixes_narrow_listings() {
        let p = principal(vec![
            Binding::new(Role::Agent, vec!["support/".into()], vec![], 128).unwrap(),
            Binding::new(Role::Agent, vec!["billing/".into()], vec![], 128).unwrap(),
            Binding::everywhere(Role::Reader),
        ]);
        assert_eq!(
            p.prefixes_for(Action::Watch),
            Some(vec!["billing/".to_string(), "support/".to_string()])
        );
        assert_eq!(p.prefixes_for(Action::ReadContent), None);
        assert_eq!(p.prefixes_for(Action::Publish), Some(vec![]));
        assert!(p.may(Action::Identify, Scope::Service));
    }

    #[test]
    fn bindings_are_checked() {
        assert_eq!(
            Binding::new(Role::Author, vec![], vec![label("staging")], 128)
                .unwrap_err()
                .field,
            "labels"
        );
        assert_eq!(
            Binding::new(Role::Reader, vec!["".into()], vec![], 128)
                .unwrap_err()
                .field,
            "prefixes[0]"
        );
        assert_eq!(Role::parse("role", "owner").unwrap_err().field, "role");
        assert!(check_subject("subject", "spiffe://prod/agent").is_ok());
        for bad in [
            "",
            "has space",
            "ünicode",
            &"x".repeat(MAX_SUBJECT_BYTES + 1),
        ] {
            let error = check_subject("subject", bad).unwrap_err();
            assert_eq!(error.field, "subject");
            assert!(
                error.to_string().contains("certificate principal"),
                "{error}"
            );
        }
        assert!(check_token_name("name", "ci-1.deploy_x").is_ok());
        for bad in ["", "-lead", "Upper", &"x".repeat(MAX_TOKEN_NAME_BYTES + 1)] {
            assert_eq!(check_token_name("name", bad).unwrap_err().field, "name");
        }
        assert_eq!(Role::parse("role", "deployer").unwrap(), Role::Deployer);
    }

    #[test]
    fn anonymous_is_an_admin() {
        let p = Principal::anonymous();
        assert!(p.may(Action::Administer, Scope::EveryPrompt));
        assert_eq!(p.name, "anonymous");
    }
}
