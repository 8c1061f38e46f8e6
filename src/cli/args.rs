//! The command line's flags and subcommands (clap definitions): a stable
//! contract, documented in the README's CLI reference.

use super::release_args::*;
use super::rollout_args::{ReportArgs, RolloutArgs};
use super::{filters, ServeArgs};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "promptreg",
    version,
    about = "A prompt version registry for fleets of LLM agents",
    long_about = "A prompt version registry for fleets of LLM agents.\n\n\
        `promptreg serve` runs the registry. Every other subcommand is a client of a running \
        registry, reached at --server (env PROMPTREG_SERVER).\n\n\
        Exit codes: 0 success; 1 the request was refused (not found, failed precondition, \
        invalid argument, unavailable): nothing changed; 2 usage error; 3 the server could not be \
        reached; 4 the label moved but `--wait` did not see the fleet converge (timed out, or no \
        connected agent): the move happened, do not repeat it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options every client subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
    /// The registry's gRPC address: HOST:PORT or http://HOST:PORT
    /// (plaintext), https://HOST:PORT (TLS). Default: the current
    /// context's, else http://127.0.0.1:50051.
    #[arg(long, global = true, env = "PROMPTREG_SERVER")]
    pub server: Option<String>,
    /// Use this context of the config file (`promptreg config
    /// get-contexts`) instead of the current one. Flags and environment
    /// variables given win over its settings.
    #[arg(long, global = true, env = "PROMPTREG_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// The bearer token to send (`prt_…`). Prefer PROMPTREG_TOKEN or
    /// --token-file: a flag is visible to other users in the process list.
    #[arg(
        long,
        env = "PROMPTREG_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Read the bearer token from this file (the server writes the first
    /// admin token to DATA_DIR/admin.token).
    #[arg(
        long,
        env = "PROMPTREG_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<std::path::PathBuf>,
    /// With https://: trust the server certificate this CA (PEM) signed,
    /// instead of the system's roots.
    #[arg(long, env = "PROMPTREG_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// With https://: present this client certificate (PEM) for mTLS;
    /// needs --client-key.
    #[arg(long, env = "PROMPTREG_CLIENT_CERT", value_name = "FILE")]
    pub client_cert: Option<std::path::PathBuf>,
    /// The key of --client-cert (PEM).
    #[arg(long, env = "PROMPTREG_CLIENT_KEY", value_name = "FILE")]
    pub client_key: Option<std::path::PathBuf>,
    /// Output format: human-readable text, or JSON (one object per result,
    /// JSON lines for lists).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry server.
    Serve(ServeArgs),
    /// Publish a new version of a prompt (identical content returns the existing version).
    Publish(PublishArgs),
    /// Show one version with its content (default: the `latest` label).
    Get(GetArgs),
    /// List prompts, optionally under a name prefix.
    List(ListArgs),
    /// List the versions of a prompt, newest first, with their checks;
    /// filter by tag, passing checks, or what a label's policy accepts.
    Versions(VersionsArgs),
    /// List the labels of a prompt and where they point.
    Labels(NameArgs),
    /// Move a label to a version.
    Promote(PromoteArgs),
    /// Move a label back one step in its history, or to --to VERSION.
    Rollback(RollbackArgs),
    /// Remove a label (recorded in its history; it stops resolving).
    Unlabel(UnlabelArgs),
    /// Show every move of a label, newest first.
    History(HistoryArgs),
    /// Resolve a label now, or as it was at a time or revision.
    Resolve(ResolveArgs),
    /// Diff two versions of a prompt.
    Diff(DiffArgs),
    /// Stream changes as they happen; reconnects and resumes by itself.
    Watch(WatchArgs),
    /// Show which agents run which version of a label.
    Fleet(FleetArgs),
    /// List the server's signing keys; `keys rotate` makes a new one.
    Keys(KeysArgs),
    /// Check a version locally: recompute its digest and verify its signature.
    Verify(VerifyArgs),
    /// Read the audit ledger; `audit verify` and `audit checkpoint`.
    Audit(AuditArgs),
    /// Remove the content of old, never-labelled versions (tombstones keep
    /// number, digest and signature).
    Prune(PruneArgs),
    /// Which prompt and version a digest is, and which labels pointed to it when.
    Whois(WhoisArgs),
    /// Write an online, consistent backup of the server's store to FILE.
    Backup(BackupArgs),
    /// Restore a backup into an empty data directory (offline: no server).
    Restore(RestoreArgs),
    /// Bearer tokens (admin): create one, list them, revoke one.
    Tokens(TokensArgs),
    /// Who the server takes you for, and what you may do.
    Whoami(WhoamiArgs),
    /// Record a check result for a version (attester): CI or an eval suite.
    Attest(AttestArgs),
    /// Show the check results of a version.
    Checks(ChecksArgs),
    /// Attester keys for signed (DSSE) check results: add, list, remove.
    Attesters(AttestersArgs),
    /// Release policies per label and prefix: set, get, list, delete.
    Policy(PolicyArgs),
    /// Freeze a label under a prefix until a time (admin).
    Freeze(FreezeArgs),
    /// End a freeze before its time (admin).
    Unfreeze(UnfreezeArgs),
    /// List the freezes in force.
    Freezes(FreezesArgs),
    /// List promotion requests (moves of protected labels awaiting approval).
    Requests(RequestsArgs),
    /// Approve a promotion request (approver); the last approval moves the label.
    Approve(ReviewArgs),
    /// Reject a promotion request (approver).
    Reject(ReviewArgs),
    /// Progressive rollouts of a label: start, status, pause, resume, abort, advance, promote.
    Rollout(RolloutArgs),
    /// Report an agent's outcome counts for one window (agent): what a rollout's guardrails judge.
    Report(ReportArgs),
    /// Contexts, as kubectl has them: named servers and credentials in
    /// $XDG_CONFIG_HOME/promptreg/config.toml (or PROMPTREG_CONFIG), one
    /// of them current.
    Config(super::config::ConfigArgs),
    /// Ask the server's gRPC health service (no token needed): exit 0 when
    /// SERVING, 1 when not, 3 when it cannot be reached.
    Health(HealthArgs),
    /// Check a data directory offline: exit 0 only when the store is sound.
    Check(CheckArgs),
    /// Print a shell completion script (bash, zsh or fish) on standard output.
    #[command(
        long_about = "Print a shell completion script for promptreg on standard output \
        (a local command: the server is not contacted).\n\n\
        Install it once, then start a new shell:\n\n  \
        bash: promptreg completion bash > ~/.local/share/bash-completion/completions/promptreg\n  \
        zsh:  promptreg completion zsh > ~/.zfunc/_promptreg\n        \
        (with `fpath=(~/.zfunc $fpath)` and `autoload -U compinit && compinit` in ~/.zshrc)\n  \
        fish: promptreg completion fish > ~/.config/fish/completions/promptreg.fish\n\n\
        Or for the current shell only: `source <(promptreg completion bash)` (bash, zsh), \
        `promptreg completion fish | source` (fish)."
    )]
    Completion(super::completion::CompletionArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The file to write (replaced only once the backup is complete).
    pub file: PathBuf,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A file written by `promptreg backup`.
    pub file: PathBuf,
    /// The data directory to create; it must be empty or missing. Needed
    /// with `--store sled` (the default).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// With `--store etcd`: restore into an empty prefix of an etcd cluster
    /// instead (moving a registry from sled to the cluster).
    #[command(flatten)]
    pub store: super::serve_store::StoreArgs,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The data directory to check (no server may be using it).
    #[arg(long, env = "PROMPTREG_DATA_DIR", default_value = "./promptreg-data")]
    pub data_dir: PathBuf,
    /// The data key of an encrypted store (to check digests of sealed content).
    #[arg(long, env = "PROMPTREG_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub encryption_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct WhoisArgs {
    /// A content digest, sha256:<64 hex>, as seen in an agent's trace or
    /// log, or a unique prefix of at least 8 hex digits (sha256:1475eb76).
    pub digest: String,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The prompt's name.
    pub name: String,
    /// Always keep the newest this many versions.
    #[arg(long, value_name = "N")]
    pub keep_last: u32,
    /// Only prune versions older than this, e.g. 30d.
    #[arg(long, value_name = "DURATION", value_parser = crate::time::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Show what would be pruned; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why (required unless --dry-run; recorded in the audit ledger).
    #[arg(long, required_unless_present = "dry_run")]
    pub reason: Option<String>,
    /// Ignored: the server records the authenticated principal (the
    /// token's name, the certificate's principal, or `anonymous` with
    /// --insecure-no-auth). Kept so that older scripts still run.
    #[arg(long)]
    pub actor: Option<String>,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(subcommand)]
    pub action: TokensAction,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Subcommand)]
pub enum TokensAction {
    /// Create a token and print its secret, the only time it is shown.
    Create {
        /// The token's name, recorded as the actor of what it does (a-z,
        /// 0-9, `.`, `_`, `-`).
        name: String,
        /// The role: reader, agent, author, deployer or admin.
        #[arg(long)]
        role: String,
        /// A name prefix the role covers (repeatable; none: every prompt).
        #[arg(long = "prefix", value_name = "PREFIX")]
        prefixes: Vec<String>,
        /// For a deployer: a label it may move (repeatable; none: every label).
        #[arg(long = "label", value_name = "LABEL")]
        labels: Vec<String>,
        /// Stop working after this long (`90d`, `12h`); default never.
        #[arg(long, value_name = "DURATION", value_parser = crate::time::parse_duration)]
        expires: Option<std::time::Duration>,
        /// Make a certificate grant instead: no secret; the role goes to
        /// the mTLS clients whose certificate principal is this (its first
        /// URI SAN, else first DNS SAN, else CN), e.g.
        /// `spiffe://prod/support-agent`. Recorded as their actor.
        #[arg(long, value_name = "PRINCIPAL")]
        subject: Option<String>,
    },
    /// Every token and certificate grant: name, roles and scopes, created,
    /// last used, expiry, revocation. Never a secret.
    List,
    /// Revoke a token (or certificate grant) at once; its open watch
    /// streams end.
    Revoke {
        /// The token's name.
        name: String,
        /// Why (kept in the audit ledger).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The service to ask about: "" (the server),
    /// `promptreg.v1.Registry`, or `promptreg.v1.Registry.writes` (whether
    /// writes are taken).
    #[arg(long, default_value = "")]
    pub service: String,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct WhoamiArgs {
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: Option<KeysAction>,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Generate a new signing key; new versions are signed with it, old
    /// public keys stay published.
    Rotate {
        /// Why (required; recorded in the audit ledger).
        #[arg(long)]
        reason: String,
        /// Ignored: the server records the authenticated principal (the
        /// token's name, the certificate's principal, or `anonymous` with
        /// --insecure-no-auth). Kept so that older scripts still run.
        #[arg(long)]
        actor: Option<String>,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Write a new random 32-byte data key for --encryption-key-file
    /// (a local command: the server is not contacted).
    GenDataKey {
        /// The file to create (mode 0600; an existing file is not overwritten).
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("selector").args(["version", "label"])))]
pub struct VerifyArgs {
    /// The prompt's name.
    pub name: String,
    /// A version number.
    #[arg(long)]
    pub version: Option<u64>,
    /// A label to resolve (the default is latest).
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub action: Option<AuditAction>,
    /// Only entries about this prompt.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Only entries by this actor.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this action: publish, promote, rollback, remove, rotate_key,
    /// prune, enable_encryption, token_create, token_revoke, attest,
    /// attester_add, attester_remove, policy_set, policy_delete, freeze,
    /// unfreeze, request, approve, reject, void, expired.
    #[arg(long, value_name = "ACTION", value_parser = filters::audit_action)]
    pub action_name: Option<String>,
    /// Only entries at or after this time: RFC 3339 (2026-12-02T14:05:00Z),
    /// a date (2026-12-02, midnight UTC) or a duration before now (30m, 1h, 7d).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only entries before this time (the forms of --since).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Recompute the ledger's hash chain and every version's digest and
    /// signature; exit 0 only when everything holds.
    Verify {
        /// Also check a checkpoint saved earlier by `audit checkpoint --output json`.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOptions,
    },
    /// Sign the ledger's head hash; keep the JSON elsewhere to prove later
    /// that the ledger was not rewritten.
    Checkpoint {
        #[command(flatten)]
        client: ClientOptions,
    },
}

/// `--wait`: after a label move, wait for the fleet to converge.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// After the move, wait until every connected agent watching the label
    /// has acknowledged the new target. The move is printed first in any
    /// case; exit 4 (moved, not converged) when --timeout passes first or
    /// no agent is connected, naming the stale and disconnected agents.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 30s or 2m.
    #[arg(long, default_value = "60s", value_parser = crate::time::parse_duration, requires = "wait")]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Prompt names to watch (none and no --prefix: every prompt).
    pub names: Vec<String>,
    /// Watch prompts whose name starts with this (repeatable).
    #[arg(long)]
    pub prefix: Vec<String>,
    /// Watch only this label (repeatable; default: every label).
    #[arg(long)]
    pub label: Vec<String>,
    /// Start by replaying the change log from this revision instead of a
    /// snapshot of the current targets.
    #[arg(long, value_name = "R")]
    pub from_revision: Option<u64>,
    /// Also print version-published events.
    #[arg(long)]
    pub include_versions: bool,
    /// Identify as this agent in fleet status.
    #[arg(long, value_name = "ID")]
    pub agent_id: Option<String>,
    /// Act as an agent: fetch each new target, verify its digest, and
    /// acknowledge it (applied, or rejected on a digest mismatch).
    #[arg(long)]
    pub ack: bool,
    /// The longest pause between reconnection attempts.
    #[arg(long, default_value = "30s", value_parser = crate::time::parse_duration)]
    pub max_backoff: std::time::Duration,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The prompt's name.
    pub name: String,
    /// The label.
    #[arg(long)]
    pub label: String,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct VersionsArgs {
    /// The prompt's name, e.g. support/triage.
    pub name: String,
    /// Only versions with this tag (`runtime=agent-v3`; repeatable, ANDed).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Only versions whose newest result of this check passed (repeatable).
    #[arg(long, value_name = "CHECK")]
    pub passing: Vec<String>,
    /// Only versions that satisfy this label's policy checks now.
    #[arg(long, value_name = "LABEL")]
    pub eligible_for: Option<String>,
    /// At most this many (with filters, `--limit 1` is the newest version
    /// that passes them).
    #[arg(long)]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The prompt's name, e.g. support/triage.
    pub name: String,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("body").required(true).args(["template_file", "template", "chat_file"])))]
pub struct PublishArgs {
    /// The prompt's name, e.g. support/triage.
    pub name: String,
    /// Read the text template from this file (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub template_file: Option<PathBuf>,
    /// The text template itself.
    #[arg(long, value_name = "TEXT")]
    pub template: Option<String>,
    /// Read a chat template from this JSON file (`-`: standard input):
    /// [{"role": "system", "content": "..."}, ...].
    #[arg(long, value_name = "FILE")]
    pub chat_file: Option<PathBuf>,
    /// A variable the template uses (repeat for each).
    #[arg(long = "var", value_name = "NAME")]
    pub vars: Vec<String>,
    /// The model configuration, a JSON object: '{"model": "gpt-x", "temperature": 0.2}'.
    #[arg(long, value_name = "JSON", conflicts_with = "model_config_file")]
    pub model_config: Option<String>,
    /// Read the model configuration from this JSON file (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub model_config_file: Option<PathBuf>,
    /// Why this version exists.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,
    /// Ignored: the server records the authenticated principal (the
    /// token's name, the certificate's principal, or `anonymous` with
    /// --insecure-no-auth). Kept so that older scripts still run.
    #[arg(long, value_name = "WHO")]
    pub author: Option<String>,
    /// A tag KEY=VALUE (repeat for each), e.g. runtime=agent-v3.
    #[arg(long = "tag", value_name = "K=V")]
    pub tags: Vec<String>,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("selector").args(["version", "digest", "label"])))]
pub struct GetArgs {
    /// The prompt's name.
    pub name: String,
    /// A version number.
    #[arg(long)]
    pub version: Option<u64>,
    /// A content digest, sha256:<64 hex>, or a unique prefix of at least 8
    /// hex digits.
    #[arg(long)]
    pub digest: Option<String>,
    /// A label to resolve (the default is latest).
    #[arg(long)]
    pub label: Option<String>,
    /// With --label: resolve for this agent (during a rollout, its arm's version).
    #[arg(long, value_name = "ID", requires = "label")]
    pub agent_id: Option<String>,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only prompts whose name starts with this.
    #[arg(default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The prompt's name.
    pub name: String,
    /// The version to point the label at.
    pub version: u64,
    /// The label to move, e.g. production.
    #[arg(long)]
    pub label: String,
    /// Why (required; kept in the label's history).
    #[arg(long)]
    pub reason: String,
    /// Move only if the label points to this version now (0: only if unset).
    #[arg(long, value_name = "VERSION")]
    pub expect: Option<u64>,
    /// Ignored: the server records the authenticated principal (the
    /// token's name, the certificate's principal, or `anonymous` with
    /// --insecure-no-auth). Kept so that older scripts still run.
    #[arg(long)]
    pub actor: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The prompt's name.
    pub name: String,
    /// The label to move back.
    #[arg(long)]
    pub label: String,
    /// Why (required).
    #[arg(long)]
    pub reason: String,
    /// Roll back to this version instead of one step back.
    #[arg(long, value_name = "VERSION")]
    pub to: Option<u64>,
    /// Move only if the label points to this version now (compare-and-set):
    /// a retried rollback then cannot go one step further back.
    #[arg(long, value_name = "VERSION")]
    pub expect: Option<u64>,
    /// During a rollout of the label: abort it, every agent back on the stable version.
    #[arg(long)]
    pub emergency: bool,
    /// Ignored: the server records the authenticated principal (the
    /// token's name, the certificate's principal, or `anonymous` with
    /// --insecure-no-auth). Kept so that older scripts still run.
    #[arg(long)]
    pub actor: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct UnlabelArgs {
    /// The prompt's name.
    pub name: String,
    /// The label to remove.
    #[arg(long)]
    pub label: String,
    /// Why (required).
    #[arg(long)]
    pub reason: String,
    /// Ignored: the server records the authenticated principal (the
    /// token's name, the certificate's principal, or `anonymous` with
    /// --insecure-no-auth). Kept so that older scripts still run.
    #[arg(long)]
    pub actor: Option<String>,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The prompt's name.
    pub name: String,
    /// The label.
    #[arg(long)]
    pub label: String,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("when").args(["at", "revision"])))]
pub struct ResolveArgs {
    /// The prompt's name.
    pub name: String,
    /// The label.
    #[arg(long)]
    pub label: String,
    /// Resolve as of this time: RFC 3339 (2026-11-22T14:05:00Z), a date
    /// (2026-11-22, midnight UTC) or a duration before now (30m, 1h, 7d).
    #[arg(long, value_name = "WHEN")]
    pub at: Option<String>,
    /// Resolve as of this revision.
    #[arg(long, value_name = "R")]
    pub revision: Option<u64>,
    /// Resolve for this agent now: under a rollout, its arm's version (as
    /// `get --label L --agent-id ID`).
    #[arg(long, value_name = "ID", conflicts_with_all = ["at", "revision"])]
    pub agent_id: Option<String>,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The prompt's name.
    pub name: String,
    /// The older version.
    pub from: u64,
    /// The newer version.
    pub to: u64,
    #[command(flatten)]
    pub client: ClientOptions,
}
