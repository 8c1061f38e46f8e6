//! The clap definitions of the release-policy commands (`attest`,
//! `checks`, `attesters`, `policy`, `freeze`, `unfreeze`, `freezes`,
//! `requests`, `approve`, `reject`); the rest are in `args.rs`.

use super::ClientOptions;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

/// A check's outcome on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Outcome {
    Pass,
    Fail,
}

#[derive(Debug, Args)]
pub struct AttestArgs {
    /// The prompt's name.
    pub name: String,
    /// The version checked.
    pub version: u64,
    /// The check's name (`eval`, `safety-suite`); with --envelope-file,
    /// optional (the envelope's predicate names it).
    #[arg(long)]
    pub check: Option<String>,
    /// Whether it passed; with --envelope-file, optional.
    #[arg(long, value_enum)]
    pub result: Option<Outcome>,
    /// A score, when the check has one.
    #[arg(long)]
    pub score: Option<f64>,
    /// Where the run can be seen.
    #[arg(long)]
    pub url: Option<String>,
    /// Details to keep with the result (a summary, JSON, a log; at most 64 KiB).
    #[arg(long, value_name = "FILE")]
    pub details_file: Option<PathBuf>,
    /// A DSSE envelope (JSON) holding an in-toto Statement v1 about the
    /// version's digest, signed by a registered attester key (see
    /// `attesters add` and the proto's AttestVersionRequest).
    #[arg(long, value_name = "FILE")]
    pub envelope_file: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct ChecksArgs {
    /// The prompt's name.
    pub name: String,
    /// The version.
    pub version: u64,
    /// Every result, oldest first (default: the newest of each check).
    #[arg(long)]
    pub history: bool,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct AttestersArgs {
    #[command(subcommand)]
    pub action: AttestersAction,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Subcommand)]
pub enum AttestersAction {
    /// Register an attester's Ed25519 public key (admin).
    Add {
        /// Its name, the `keyid` its envelopes give (a-z, 0-9, `.`, `_`, `-`).
        name: String,
        /// The public key: PEM (`openssl pkey -pubout` of an ed25519 key),
        /// or 32 raw bytes, or 64 hex digits.
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
    },
    /// Every attester key, removed ones too.
    List,
    /// Remove an attester key (admin): its envelopes are refused from now on.
    Remove {
        name: String,
        /// Why (kept in the audit ledger).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub action: PolicyAction,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// Set the policy of a label for every prompt under a prefix (admin);
    /// the longest prefix wins.
    Set {
        /// A name prefix (`support/`); "" for every prompt.
        prefix: String,
        /// The label it governs.
        #[arg(long)]
        label: String,
        /// Approvals a move needs (0: none). N >= 1 makes the label
        /// protected: a promote makes a promotion request.
        #[arg(long, default_value_t = 0)]
        approvals: u32,
        /// A check the target version must pass (repeatable).
        #[arg(long = "require", value_name = "CHECK")]
        require: Vec<String>,
        /// Whether a rollback to an earlier target may skip approvals,
        /// checks and freezes.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        allow_emergency_rollback: bool,
        /// How long its promotion requests wait (default: the server's
        /// --request-ttl).
        #[arg(long, value_name = "DURATION", value_parser = crate::time::parse_duration)]
        request_ttl: Option<std::time::Duration>,
        /// Why (kept in the audit ledger).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The policy that governs a label of a prompt, and its freezes.
    Get {
        /// A prompt's name.
        name: String,
        #[arg(long)]
        label: String,
    },
    /// Every policy, with who set it.
    List,
    /// Delete the policy of a prefix and label (admin).
    Delete {
        prefix: String,
        #[arg(long)]
        label: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct FreezeArgs {
    /// A name prefix (`support/`); "" for every prompt.
    pub prefix: String,
    /// The label to freeze.
    #[arg(long)]
    pub label: String,
    /// Until when: RFC 3339 (`2026-12-27T00:00:00Z`) or a duration from now (`48h`).
    #[arg(long)]
    pub until: String,
    /// Why (required; shown to whoever is refused).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct UnfreezeArgs {
    /// The prefix of the freeze.
    pub prefix: String,
    #[arg(long)]
    pub label: String,
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct FreezesArgs {
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct RequestsArgs {
    /// Only requests for this prompt.
    pub name: Option<String>,
    /// Only requests for this label.
    #[arg(long)]
    pub label: Option<String>,
    /// Only pending ones.
    #[arg(long)]
    pub pending: bool,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// The request's id (see `promptreg requests`).
    pub id: u64,
    /// Why (required; kept in the audit ledger).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub client: ClientOptions,
}
