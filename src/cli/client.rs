//! Connecting to the registry, the failures of a client command and their
//! exit codes, and `dispatch`, which routes each client subcommand to the
//! file of its group. Errors print one line on stderr.

use super::{exit, ClientOptions, Command};
use crate::grpc::access::Client;
use crate::grpc::pb::{self, registry_client::RegistryClient};
use std::path::{Path, PathBuf};
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
    if all.contains("this port serves tls") {
        return "the server serves TLS on this port: use https://HOST:PORT (and --ca-cert if a private CA signed its certificate)".to_string();
    }
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

/// `--server` as an endpoint URI: `HOST:PORT` means `http://HOST:PORT`
/// (plaintext); `https://` is TLS.
pub(super) fn server_uri(raw: &str) -> Result<String, Failure> {
    let raw = raw.trim();
    match raw.split_once("://") {
        None => Ok(format!("http://{raw}")),
        Some(("http" | "https", _)) => Ok(raw.to_string()),
        Some((scheme, _)) => Err(Failure::usage(format!(
            "--server {raw}: unknown scheme {scheme}://; use HOST:PORT, http://HOST:PORT or https://HOST:PORT"
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
    let target = Target::of(options)?;
    let channel = target.channel().await?;
    let bearer = crate::grpc::access::Bearer::new(target.token()?.as_deref()).ok_or_else(|| {
        Failure::usage(
            "the token holds characters a header cannot carry: it is not a promptreg token",
        )
    })?;
    Ok(RegistryClient::with_interceptor(channel, bearer))
}

/// A connection to the server at `--server` (or the context's).
pub(super) async fn channel(options: &ClientOptions) -> Result<tonic::transport::Channel, Failure> {
    Target::of(options)?.channel().await
}

/// Where to connect and with what: each setting from its flag or
/// environment variable, else from the context, else the default.
struct Target {
    server: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
}

/// The server when neither a flag nor a context names one.
const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

impl Target {
    fn of(options: &ClientOptions) -> Result<Target, Failure> {
        let context =
            super::config::active_context(options.context.as_deref())?.unwrap_or_default();
        // A token given on the command line replaces the context's file.
        let token_file = match options.token {
            Some(_) => None,
            None => options.token_file.clone().or(context.token_file),
        };
        Ok(Target {
            server: options
                .server
                .clone()
                .or(context.server)
                .unwrap_or_else(|| DEFAULT_SERVER.to_string()),
            token: options.token.clone(),
            token_file,
            ca_cert: options.ca_cert.clone().or(context.ca_cert),
            client_cert: options.client_cert.clone().or(context.client_cert),
            client_key: options.client_key.clone().or(context.client_key),
        })
    }

    fn tls(&self) -> Result<tonic::transport::ClientTlsConfig, Failure> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| Failure::usage(format!("cannot read {flag} {}: {e}", path.display())))
        };
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &self.ca_cert {
            Some(path) => tls.ca_certificate(tonic::transport::Certificate::from_pem(read(
                "--ca-cert",
                path,
            )?)),
            None => tls.with_native_roots(),
        };
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    read("--client-cert", cert)?,
                    read("--client-key", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(Failure::usage(
                    "--client-cert and --client-key go together: give both or neither",
                ))
            }
        }
        Ok(tls)
    }

    async fn channel(&self) -> Result<tonic::transport::Channel, Failure> {
        let uri = server_uri(&self.server)?;
        let secure = uri.starts_with("https://");
        let tls_given = self.ca_cert.is_some() || self.client_cert.is_some();
        if !secure && tls_given {
            return Err(Failure::usage(format!(
                "--ca-cert and --client-cert are for TLS, but --server {} is plaintext: use https://",
                self.server
            )));
        }
        let mut endpoint = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| {
                Failure::usage(format!("--server {:?} is not an address: {e}", self.server))
            })?
            .connect_timeout(Duration::from_secs(5));
        if secure {
            endpoint = endpoint.tls_config(self.tls()?).map_err(|e| {
                Failure::usage(format!(
                    "the TLS settings are not usable: {}",
                    error_chain(&e)
                ))
            })?;
        }
        let endpoint_uri = endpoint.uri().clone();
        match endpoint.connect().await {
            Ok(channel) => Ok(channel),
            Err(_) if secure && speaks_plaintext(&endpoint_uri).await => Err(Failure {
                code: exit::UNREACHABLE,
                message: format!(
                    "cannot reach the registry at {}: the server does not serve TLS on this port \
                     (it answered plaintext HTTP/2): use http://{}",
                    self.server,
                    endpoint_uri.authority().map_or("", |a| a.as_str())
                ),
            }),
            Err(e) => Err(Failure {
                code: exit::UNREACHABLE,
                message: format!(
                    "cannot reach the registry at {}: {}",
                    self.server,
                    why_unreachable(&e, "")
                ),
            }),
        }
    }

    /// The token to send: --token / PROMPTREG_TOKEN, else the first line of
    /// --token-file / PROMPTREG_TOKEN_FILE (or the context's), else none.
    fn token(&self) -> Result<Option<String>, Failure> {
        if let Some(token) = &self.token {
            return Ok(Some(token.trim().to_string()));
        }
        let Some(path) = &self.token_file else {
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
}

/// Whether the server at `uri` answers a plaintext HTTP/2 preface with
/// HTTP/2 SETTINGS and does not hang up at once (as a promptreg TLS port
/// does, with GOAWAY): asked only after a TLS connection failed, to say
/// why.
async fn speaks_plaintext(uri: &http::Uri) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Some(host) = uri.host() else { return false };
    let port = uri.port_u16().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let probe = async {
        let mut tcp = tokio::net::TcpStream::connect((host, port)).await?;
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await?;
        let mut header = [0u8; 9];
        tcp.read_exact(&mut header).await?;
        if header[3] != 0x04 {
            return std::io::Result::Ok(false);
        }
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length.min(1 << 14)];
        tcp.read_exact(&mut payload).await?;
        let next = tokio::time::timeout(Duration::from_millis(500), tcp.read_exact(&mut header));
        Ok(match next.await {
            Ok(Ok(_)) => header[3] != 0x07,
            Ok(Err(_)) => false,
            Err(_) => true,
        })
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut messages = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        messages.push(e.to_string());
        current = e.source();
    }
    messages.join(": ")
}

async fn dispatch(command: Command) -> Result<(), Failure> {
    use super::{access, backup, catalog, lookup, moves, policy, provenance, release, watch};
    match command {
        Command::Serve(_) => unreachable!("serve is dispatched by main"),
        Command::Completion(args) => super::completion::completion(&args),
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
        Command::Attest(args) => release::attest(args).await,
        Command::Checks(args) => release::checks(args).await,
        Command::Attesters(args) => policy::attesters(args).await,
        Command::Policy(args) => policy::policy(args).await,
        Command::Freeze(args) => policy::freeze(args).await,
        Command::Unfreeze(args) => policy::unfreeze(args).await,
        Command::Freezes(args) => policy::freezes(args).await,
        Command::Requests(args) => release::requests(args).await,
        Command::Approve(args) => release::review(args, true).await,
        Command::Reject(args) => release::review(args, false).await,
        Command::Rollout(args) => super::rollout::rollout(args).await,
        Command::Report(args) => super::rollout::report(args).await,
        Command::Config(args) => super::config::run(args),
        Command::Health(args) => access::health(args).await,
        Command::Verify(args) => provenance::verify(args).await,
        Command::Audit(args) => provenance::audit(args).await,
        Command::Prune(args) => provenance::prune(args).await,
        Command::Backup(args) => backup::backup(args).await,
        Command::Restore(args) => backup::restore(args),
        Command::Check(args) => backup::check(args),
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
