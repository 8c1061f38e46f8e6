//! Contexts, as kubectl has them: named sets of connection settings (the
//! server, the token file, the TLS files) in one config file, one of them
//! current. `config set-context|use-context|get-contexts|delete-context`.
//!
//! The file is `$PROMPTREG_CONFIG`, else `$XDG_CONFIG_HOME/promptreg/
//! config.toml`, else `~/.config/promptreg/config.toml`, written with mode
//! 0600 (its directory 0700). It names files, never secrets: a context
//! takes a token file, not a token. A flag or environment variable given
//! on the command line wins over the context.

use super::client::Failure;
use super::OutputFormat;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Create a context, or change the settings given of an existing one.
    /// The first context made becomes the current one.
    SetContext {
        /// The context's name.
        name: String,
        /// The registry's address: HOST:PORT, http://HOST:PORT or
        /// https://HOST:PORT.
        #[arg(long)]
        server: Option<String>,
        /// The file holding the bearer token (a secret: keep it 0600).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The CA certificate (PEM) that signs the server's certificate.
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<PathBuf>,
        /// The client certificate (PEM) for mTLS.
        #[arg(long, value_name = "FILE")]
        client_cert: Option<PathBuf>,
        /// The client certificate's key (PEM).
        #[arg(long, value_name = "FILE")]
        client_key: Option<PathBuf>,
    },
    /// Make a context the current one.
    UseContext {
        /// The context's name.
        name: String,
    },
    /// List the contexts; `*` marks the current one.
    GetContexts {
        /// Output format: text, or JSON lines.
        #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Remove a context.
    DeleteContext {
        /// The context's name.
        name: String,
    },
}

/// One context's settings; absent ones fall back to the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) ca_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) client_key: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current_context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, Context>,
}

/// Where the config file is.
fn config_path() -> Result<PathBuf, Failure> {
    let non_empty = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    if let Some(path) = non_empty("PROMPTREG_CONFIG") {
        return Ok(PathBuf::from(path));
    }
    let base =
        match non_empty("XDG_CONFIG_HOME") {
            Some(dir) => PathBuf::from(dir),
            None => match non_empty("HOME") {
                Some(home) => PathBuf::from(home).join(".config"),
                None => return Err(Failure::usage(
                    "cannot find the config file: set PROMPTREG_CONFIG, XDG_CONFIG_HOME or HOME",
                )),
            },
        };
    Ok(base.join("promptreg").join("config.toml"))
}

fn load(path: &Path) -> Result<ConfigFile, Failure> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            Failure::usage(format!(
                "the config file {} is not valid: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(Failure::usage(format!(
            "cannot read the config file {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the file whole (a temporary file renamed over it), mode 0600.
fn save(path: &Path, config: &ConfigFile) -> Result<(), Failure> {
    let fail = |e: std::io::Error| {
        Failure::usage(format!(
            "cannot write the config file {}: {e}",
            path.display()
        ))
    };
    let text = toml::to_string_pretty(config)
        .map_err(|e| Failure::usage(format!("cannot write the config: {e}")))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(fail)?;
        }
    }
    let temporary = path.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&temporary);
    crate::provenance::write_private(&temporary, text.as_bytes()).map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(fail)
}

/// The context a client command uses: `--context` (or PROMPTREG_CONTEXT),
/// else the current one, else none (the built-in defaults).
pub(super) fn active_context(named: Option<&str>) -> Result<Option<Context>, Failure> {
    let path = config_path();
    let (path, config) = match (named, path) {
        (None, Err(_)) => return Ok(None),
        (Some(_), Err(e)) => return Err(e),
        (_, Ok(path)) => {
            let config = load(&path)?;
            (path, config)
        }
    };
    let Some(name) = named.map(str::to_string).or(config.current_context) else {
        return Ok(None);
    };
    match config.contexts.get(&name) {
        Some(context) => Ok(Some(context.clone())),
        None => Err(Failure::usage(format!(
            "no context is named {name:?} in {}; `promptreg config get-contexts` lists them",
            path.display()
        ))),
    }
}

fn check_name(name: &str) -> Result<(), Failure> {
    let fine = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if fine {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "{name:?} is not a context name: 1 to 64 of a-z, A-Z, 0-9, '.', '_', '-'"
        )))
    }
}

/// The absolute form of a path given on the command line, so the context
/// works from any directory.
fn absolute(path: PathBuf) -> Result<PathBuf, Failure> {
    std::path::absolute(&path)
        .map_err(|e| Failure::usage(format!("cannot resolve {}: {e}", path.display())))
}

pub(super) fn run(args: ConfigArgs) -> Result<(), Failure> {
    let path = config_path()?;
    let mut config = load(&path)?;
    match args.action {
        ConfigAction::SetContext {
            name,
            server,
            token_file,
            ca_cert,
            client_cert,
            client_key,
        } => {
            check_name(&name)?;
            if let Some(server) = &server {
                super::client::server_uri(server)?;
            }
            let context = config.contexts.entry(name.clone()).or_default();
            if server.is_some() {
                context.server = server;
            }
            for (slot, given) in [
                (&mut context.token_file, token_file),
                (&mut context.ca_cert, ca_cert),
                (&mut context.client_cert, client_cert),
                (&mut context.client_key, client_key),
            ] {
                if let Some(given) = given {
                    *slot = Some(absolute(given)?);
                }
            }
            let first = config.current_context.is_none();
            if first {
                config.current_context = Some(name.clone());
            }
            save(&path, &config)?;
            let current = if first {
                " (now the current context)"
            } else {
                ""
            };
            println!("context {name} set in {}{current}", path.display());
        }
        ConfigAction::UseContext { name } => {
            if !config.contexts.contains_key(&name) {
                return Err(Failure::usage(format!(
                    "no context is named {name:?} in {}; make it with `promptreg config set-context {name} --server URL`",
                    path.display()
                )));
            }
            config.current_context = Some(name.clone());
            save(&path, &config)?;
            println!("switched to context {name}");
        }
        ConfigAction::DeleteContext { name } => {
            if config.contexts.remove(&name).is_none() {
                return Err(Failure::usage(format!("no context is named {name:?}")));
            }
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = None;
            }
            save(&path, &config)?;
            println!("deleted context {name}");
        }
        ConfigAction::GetContexts { output } => print_contexts(&config, output),
    }
    Ok(())
}

#[derive(Serialize)]
struct ContextJson<'a> {
    name: &'a str,
    current: bool,
    #[serde(flatten)]
    context: &'a Context,
}

fn print_contexts(config: &ConfigFile, output: OutputFormat) {
    let current = config.current_context.as_deref();
    if output == OutputFormat::Json {
        for (name, context) in &config.contexts {
            let line = ContextJson {
                name,
                current: Some(name.as_str()) == current,
                context,
            };
            println!("{}", serde_json::to_string(&line).unwrap_or_default());
        }
        return;
    }
    let shown = |path: &Option<PathBuf>| {
        path.as_ref()
            .map_or("-".to_string(), |p| p.display().to_string())
    };
    let rows: Vec<Vec<String>> = config
        .contexts
        .iter()
        .map(|(name, context)| {
            vec![
                if Some(name.as_str()) == current {
                    "*".into()
                } else {
                    String::new()
                },
                name.clone(),
                context.server.clone().unwrap_or_else(|| "-".into()),
                shown(&context.token_file),
                shown(&context.ca_cert),
                shown(&context.client_cert),
            ]
        })
        .collect();
    println!(
        "{}",
        super::text::table(
            &[
                "CURRENT",
                "NAME",
                "SERVER",
                "TOKEN FILE",
                "CA CERT",
                "CLIENT CERT"
            ],
            &rows
        )
    );
}
