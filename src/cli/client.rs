//! Connecting to the registry, the failures of a client command and their
//! exit codes, and `dispatch`, which routes each client subcommand to the
//! file of its group. Errors print one line on stderr.

use super::{exit, ClientOptions, Command};
use crate::grpc::access::Client;
use crate::grpc::pb::{self, registry_client::RegistryClient};
use std::time::Duration;
use tonic::Code;

/// A failed client command: what to print and the exit code.
pub(super) struct Failure {
    pub(super) code: i32,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: exit::USAGE,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    /// A status made on this side from a transport error (no answer came)
    /// is "cannot reach", exit 3; every status the server answered with,
    /// UNAVAILABLE included, is a refusal, exit 1.
    fn from(status: tonic::Status) -> Failure {
        if let Some(source) = std::error::Error::source(&status) {
            return Failure {
                code: exit::UNREACHABLE,
                message: format!(
                    "cannot reach the registry: {}",
                    why_unreachable(source, status.message())
                ),
            };
        }
        let kind = match status.code() {
            Code::NotFound => "not found",
            Code::InvalidArgument => "invalid argument",
            Code::FailedPrecondition => "failed precondition",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission denied",
            _ => "refused",
        };
        Failure {
            code: exit::REFUSED,
            message: format!("{kind}: {}", status.message()),
        }
    }
}

/// Why a connection failed, in the words an operator searches for first:
/// connection refused, name not resolved, timed out, TLS; then the
/// innermost error's own words.
pub(super) fn why_unreachable(error: &(dyn std::error::Error + 'static), context: &str) -> String {
    let mut messages = vec![context.to_string()];
    let mut io_kind = None;
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        messages.push(e.to_string());
        current = e.source();
    }
    let all = messages.join(": ").to_lowercase();
    let innermost = messages
        .iter()
        .rev()
        .find(|m| !m.is_empty())
        .cloned()
        .unwrap_or_default();
    use std::io::ErrorKind;
    let why = if all.contains("dns error")
        || all.contains("failed to lookup address")
        || all.contains("name or service not known")
        || all.contains("no address associated")
    {
        "name not resolved"
    } else if io_kind == Some(ErrorKind::ConnectionRefused) || all.contains("connection refused") {
        "connection refused (is the server running on that address?)"
    } else if io_kind == Some(ErrorKind::TimedOut)
        || all.contains("timed out")
        || all.contains("elapsed")
    {
        "timed out"
    } else if all.contains("tls") || all.contains("certificate") || all.contains("handshake") {
        "TLS handshake failed"
    } else if io_kind == Some(ErrorKind::ConnectionReset) || all.contains("connection reset") {
        "connection reset"
    } else if all.contains("unreachable") {
        "network unreachable"
    } else {
        "transport error"
    };
    format!("{why} ({innermost})")
}

/// `--server` as an endpoint URI: `HOST:PORT` means `http://HOST:PORT`;
/// `https://` is refused while the server has no TLS (it would otherwise
/// talk plaintext to an address that promised encryption).
pub(super) fn server_uri(raw: &str) -> Result<String, Failure> {
    let raw = raw.trim();
    match raw.split_once("://") {
        None => Ok(format!("http://{raw}")),
        Some(("http", _)) => Ok(raw.to_string()),
        Some(("https", _)) => Err(Failure::usage(format!(
            "--server {raw}: https:// is not supported yet: promptreg serves plaintext gRPC only \
             (no TLS); use HOST:PORT or http://HOST:PORT, over a network you trust"
        ))),
        Some((scheme, _)) => Err(Failure::usage(format!(
            "--server {raw}: unknown scheme {scheme}://; use HOST:PORT or http://HOST:PORT"
        ))),
    }
}

/// Runs one client subcommand; returns the process exit code.
pub async fn run_client(command: Command) -> i32 {
    match dispatch(command).await {
        Ok(()) => 0,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            failure.code
        }
    }
}

pub(super) async fn connect(options: &ClientOptions) -> Result<Client, Failure> {
    let channel = channel(options).await?;
    let bearer = crate::grpc::access::Bearer::new(token(options)?.as_deref()).ok_or_else(|| {
        Failure::usage(
            "the token holds characters a header cannot carry: it is not a promptreg token",
        )
    })?;
    Ok(RegistryClient::with_interceptor(channel, bearer))
}

/// A connection to the server at `--server`.
pub(super) async fn channel(options: &ClientOptions) -> Result<tonic::transport::Channel, Failure> {
    let uri = server_uri(&options.server)?;
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| {
            Failure::usage(format!(
                "--server {:?} is not an address: {e}",
                options.server
            ))
        })?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| Failure {
        code: exit::UNREACHABLE,
        message: format!(
            "cannot reach the registry at {}: {}",
            options.server,
            why_unreachable(&e, "")
        ),
    })?;
    Ok(channel)
}

/// The token to send: --token / PROMPTREG_TOKEN, else the first line of
/// --token-file / PROMPTREG_TOKEN_FILE, else none.
fn token(options: &ClientOptions) -> Result<Option<String>, Failure> {
    if let Some(token) = &options.token {
        return Ok(Some(token.trim().to_string()));
    }
    let Some(path) = &options.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::usage(format!(
            "cannot read the token file {} (--token-file): {e}",
            path.display()
        ))
    })?;
    match text.lines().next().map(str::trim) {
        Some(token) if !token.is_empty() => Ok(Some(token.to_string())),
        _ => Err(Failure::usage(format!(
            "the token file {} is empty",
            path.display()
        ))),
    }
}

async fn dispatch(command: Command) -> Result<(), Failure> {
    use super::{access, backup, catalog, lookup, moves, provenance, watch};
    match command {
        Command::Serve(_) => unreachable!("serve is dispatched by main"),
        Command::Completion(args) => completion(&args),
        Command::Publish(args) => catalog::publish(args).await,
        Command::List(args) => catalog::list(args).await,
        Command::Versions(args) => catalog::versions(args).await,
        Command::Labels(args) => catalog::labels(args).await,
        Command::Diff(args) => catalog::diff(args).await,
        Command::Whois(args) => lookup::whois(args).await,
        Command::Get(args) => lookup::get(args).await,
        Command::Resolve(args) => lookup::resolve(args).await,
        Command::Promote(args) => moves::promote(args).await,
        Command::Rollback(args) => moves::rollback(args).await,
        Command::Unlabel(args) => moves::unlabel(args).await,
        Command::History(args) => moves::history(args).await,
        Command::Fleet(args) => moves::fleet(args).await,
        Command::Watch(args) => watch::run_watch(args).await,
        Command::Keys(args) => provenance::keys(args).await,
        Command::Tokens(args) => access::tokens(args).await,
        Command::Whoami(args) => access::whoami(args).await,
        Command::Health(args) => access::health(args).await,
        Command::Verify(args) => provenance::verify(args).await,
        Command::Audit(args) => provenance::audit(args).await,
        Command::Prune(args) => provenance::prune(args).await,
        Command::Backup(args) => backup::backup(args).await,
        Command::Restore(args) => backup::restore(args),
        Command::Check(args) => backup::check(args),
    }
}

/// `completion SHELL`: the script on standard output (a closed pipe is not
/// an error).
fn completion(args: &super::CompletionArgs) -> Result<(), Failure> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(&args.script()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::usage(format!("cannot write the script: {e}")))
        }
        _ => Ok(()),
    }
}

/// The version a `GetVersion` request names.
pub(super) async fn get_version(
    client: &mut Client,
    request: pb::GetVersionRequest,
) -> Result<pb::Version, tonic::Status> {
    let response = client.get_version(request).await?.into_inner();
    Ok(response.version.unwrap_or_default())
}
