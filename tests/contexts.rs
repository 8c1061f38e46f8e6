//! CLI contexts (`promptreg config ...`) against the real binary: the file
//! and its mode, which context a command uses, and what wins over it.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};
use support::{binary, ServerProcess};

/// The CLI with only the config file set: no server, token or context from
/// the environment.
fn promptreg(config: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(binary());
    for setting in support::CLIENT_SETTINGS {
        command.env_remove(setting);
    }
    command.env_remove("PROMPTREG_SERVER");
    command.env_remove("XDG_CONFIG_HOME");
    command
        .env("PROMPTREG_CONFIG", config)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(out: Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(needle), "{stderr:?} should say {needle:?}");
}

#[test]
fn contexts_choose_the_server_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let prod = ServerProcess::start(&dir.path().join("prod"), &[]);
    let staging = ServerProcess::start(&dir.path().join("staging"), &[]);
    let prod_token = dir.path().join("prod.token");
    std::fs::write(&prod_token, prod.token.as_deref().unwrap()).unwrap();
    let staging_token = dir.path().join("staging.token");
    std::fs::write(&staging_token, staging.token.as_deref().unwrap()).unwrap();
    let config = dir
        .path()
        .join("conf")
        .join("promptreg")
        .join("config.toml");

    // Before any context, a client command uses the built-in default.
    fails(
        promptreg(&config, &["list", "--server", "127.0.0.1:1"]),
        3,
        "connection refused",
    );

    let out = ok(promptreg(
        &config,
        &[
            "config",
            "set-context",
            "prod",
            "--server",
            &prod.url,
            "--token-file",
            prod_token.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("now the current context"), "{out}");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config file is private");
    let dir_mode = std::fs::metadata(config.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("current-context = \"prod\""), "{text}");
    assert!(
        !text.contains("prt_"),
        "the file names token files, not tokens"
    );

    ok(promptreg(
        &config,
        &[
            "config",
            "set-context",
            "staging",
            "--server",
            &staging.url,
            "--token-file",
            staging_token.to_str().unwrap(),
        ],
    ));
    // Publish to prod through the current context only.
    ok(promptreg(
        &config,
        &["publish", "support/refund", "--template", "prod text"],
    ));
    let listed = ok(promptreg(&config, &["list"]));
    assert!(listed.contains("support/refund"), "{listed}");
    // --context picks another one for one command.
    let listed = ok(promptreg(&config, &["list", "--context", "staging"]));
    assert!(!listed.contains("support/refund"), "{listed}");

    let contexts = ok(promptreg(&config, &["config", "get-contexts"]));
    let current: Vec<&str> = contexts.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(current.len(), 1, "{contexts}");
    assert!(current[0].contains("prod"), "{contexts}");

    ok(promptreg(&config, &["config", "use-context", "staging"]));
    let listed = ok(promptreg(&config, &["list"]));
    assert!(!listed.contains("support/refund"), "{listed}");
    let json = ok(promptreg(
        &config,
        &["config", "get-contexts", "-o", "json"],
    ));
    let staging_line = json.lines().find(|l| l.contains("\"staging\"")).unwrap();
    assert!(staging_line.contains("\"current\":true"), "{json}");

    // A flag wins over the context: the prod server with the staging token
    // is refused (the token is prod's to accept).
    fails(
        promptreg(&config, &["list", "--server", &prod.url]),
        1,
        "unauthenticated",
    );
    // And a token given wins over the context's token file.
    let out = promptreg(
        &config,
        &[
            "list",
            "--server",
            &prod.url,
            "--token",
            prod.token.as_deref().unwrap(),
        ],
    );
    assert!(ok(out).contains("support/refund"));

    // Changing one setting keeps the others.
    ok(promptreg(
        &config,
        &["config", "set-context", "staging", "--server", &prod.url],
    ));
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("staging.token"), "{text}");

    fails(
        promptreg(&config, &["config", "use-context", "nope"]),
        2,
        "no context is named \"nope\"",
    );
    fails(
        promptreg(&config, &["list", "--context", "nope"]),
        2,
        "no context is named \"nope\"",
    );
    fails(
        promptreg(&config, &["config", "set-context", "bad name"]),
        2,
        "is not a context name",
    );
    fails(
        promptreg(
            &config,
            &["config", "set-context", "x", "--server", "ftp://host:1"],
        ),
        2,
        "unknown scheme",
    );
    ok(promptreg(&config, &["config", "delete-context", "staging"]));
    let contexts = ok(promptreg(&config, &["config", "get-contexts"]));
    assert!(!contexts.contains("staging"), "{contexts}");
    assert!(!contexts.lines().any(|l| l.starts_with('*')), "{contexts}");

    // A broken file is a clear error, not a silent default.
    std::fs::write(&config, "current-context = [").unwrap();
    fails(promptreg(&config, &["list"]), 2, "is not valid");
}
