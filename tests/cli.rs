//! The `promptreg` CLI end to end against the real server binary: output,
//! `--output json`, exit codes, signals, the data-directory lock.

mod support;

use serde_json::Value;
use std::process::{Command, Output};
use support::{binary, wait_with_timeout, ServerProcess};

struct Cli {
    url: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        support::cli_command(&self.url)
            .args(args)
            .env("USER", "oncall")
            .output()
            .expect("run promptreg")
    }

    /// Runs and expects exit 0; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `--output json` and parses every line.
    fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        self.ok(&args)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// Runs and expects `code`, with stderr mentioning `needle`.
    fn fails(&self, args: &[&str], code: i32, needle: &str) {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr {stderr:?} should mention {needle:?}"
        );
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed to stdout on failure"
        );
    }
}

#[test]
fn cli_end_to_end() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &["--log-format", "json"]);
    let cli = Cli {
        url: server.url.clone(),
    };

    let template = temp.path().join("triage.txt");
    std::fs::write(&template, "You triage {{product}} tickets.\n").unwrap();
    let out = cli.ok(&[
        "publish",
        "support/triage",
        "--template-file",
        template.to_str().unwrap(),
        "--var",
        "product",
    ]);
    assert!(
        out.contains("support/triage published version 1 (sha256:"),
        "{out}"
    );

    let chat = temp.path().join("chat.json");
    std::fs::write(&chat, r#"[{"role":"system","content":"Triage {{product}}."},{"role":"user","content":"{{ticket}}"}]"#).unwrap();
    let v2 = &cli.json(&[
        "publish",
        "support/triage",
        "--chat-file",
        chat.to_str().unwrap(),
        "--var",
        "product",
        "--var",
        "ticket",
        "--model-config",
        r#"{"model":"m","temperature":0.1}"#,
        "--description",
        "chat form",
        "--tag",
        "runtime=agent-v3",
    ])[0];
    assert_eq!(v2["name"], "support/triage");
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["revision"], 2);
    assert_eq!(v2["created"], true);
    assert!(v2["digest"].as_str().unwrap().starts_with("sha256:"));
    let again = &cli.json(&[
        "publish",
        "support/triage",
        "--template-file",
        template.to_str().unwrap(),
        "--var",
        "product",
    ])[0];
    assert_eq!(
        (again["version"].as_u64(), again["created"].as_bool()),
        (Some(1), Some(false))
    );

    let promoted = &cli.json(&[
        "promote",
        "support/triage",
        "1",
        "--label",
        "production",
        "--reason",
        "first rollout",
    ])[0];
    assert_eq!(
        (promoted["version"].as_u64(), promoted["revision"].as_u64()),
        (Some(1), Some(3))
    );
    let promoted = &cli.json(&[
        "promote",
        "support/triage",
        "2",
        "--label",
        "production",
        "--reason",
        "chat",
        "--expect",
        "1",
    ])[0];
    assert_eq!(promoted["from_version"], 1);
    assert_eq!(promoted["to_version"], 2);
    cli.fails(
        &[
            "promote",
            "support/triage",
            "1",
            "--label",
            "production",
            "--reason",
            "x",
            "--expect",
            "1",
        ],
        1,
        "points to version 2, not the expected version 1",
    );
    let rolled = &cli.json(&[
        "rollback",
        "support/triage",
        "--label",
        "production",
        "--reason",
        "bad answers",
        "--actor",
        "pager",
    ])[0];
    assert_eq!(
        (
            rolled["from_version"].as_u64(),
            rolled["to_version"].as_u64()
        ),
        (Some(2), Some(1))
    );

    let history = cli.json(&["history", "support/triage", "--label", "production"]);
    assert_eq!(history.len(), 3);
    for key in [
        "revision",
        "kind",
        "from_version",
        "to_version",
        "actor",
        "reason",
        "time",
    ] {
        assert!(
            history.iter().all(|h| h.get(key).is_some()),
            "history lines carry {key}"
        );
    }
    assert_eq!(history[0]["kind"], "rollback");
    // The token's name, whatever --actor or the local user says.
    assert_eq!(history[0]["actor"], "admin");
    assert_eq!(history[1]["actor"], "admin");
    assert_eq!(history[2]["from_version"], Value::Null);

    // resolve now, at a revision, at a time.
    let now = &cli.json(&["resolve", "support/triage", "--label", "production"])[0];
    assert_eq!(now["version"], 1);
    let at_rev = &cli.json(&[
        "resolve",
        "support/triage",
        "--label",
        "production",
        "--revision",
        "4",
    ])[0];
    assert_eq!(at_rev["version"], 2);
    assert_eq!(at_rev["revision"], 4);
    let time_of_v2 = history[1]["time"].as_str().unwrap();
    let at_time = &cli.json(&[
        "resolve",
        "support/triage",
        "--label",
        "production",
        "--at",
        time_of_v2,
    ])[0];
    assert_eq!(at_time["version"], 2);
    let text = cli.ok(&[
        "resolve",
        "support/triage",
        "--label",
        "production",
        "--revision",
        "3",
    ]);
    assert!(text.contains("support/triage production -> v1"), "{text}");
    cli.fails(
        &[
            "resolve",
            "support/triage",
            "--label",
            "production",
            "--at",
            "yesterday",
        ],
        2,
        "--at",
    );

    let got = &cli.json(&["get", "support/triage", "--version", "2"])[0];
    assert_eq!(got["template"]["chat"][1]["content"], "{{ticket}}");
    assert_eq!(got["model_config"]["temperature"], 0.1);
    assert_eq!(got["tags"]["runtime"], "agent-v3");
    let text = cli.ok(&["get", "support/triage", "--label", "production"]);
    assert!(text.contains("You triage {{product}} tickets."), "{text}");

    let diff = cli.ok(&["diff", "support/triage", "1", "2"]);
    assert!(
        diff.contains("+[system]") && diff.contains("variable added: ticket"),
        "{diff}"
    );
    assert_eq!(
        cli.json(&["diff", "support/triage", "1", "2"])[0]["variables_added"][0],
        "ticket"
    );

    let list = cli.json(&["list", "support/"]);
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0]["name"].as_str(), list[0]["version"].as_u64()),
        (Some("support/triage"), Some(2))
    );
    let versions = cli.json(&["versions", "support/triage"]);
    assert_eq!(
        versions
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 1]
    );
    let labels = cli.json(&["labels", "support/triage"]);
    assert_eq!(
        labels
            .iter()
            .map(|l| l["label"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["latest", "production"]
    );

    let removed = &cli.json(&[
        "unlabel",
        "support/triage",
        "--label",
        "production",
        "--reason",
        "pause",
    ])[0];
    assert_eq!(removed["to_version"], Value::Null);
    cli.fails(
        &["resolve", "support/triage", "--label", "production"],
        1,
        "not found: label production is not set",
    );

    // Exit codes: refused 1, usage 2, unreachable 3.
    cli.fails(&["get", "nope"], 1, "prompt nope does not exist");
    cli.fails(
        &["publish", "Bad Name", "--template", "x"],
        1,
        "invalid argument: name:",
    );
    cli.fails(
        &["promote", "support/triage", "1", "--label", "production"],
        2,
        "--reason",
    );
    cli.fails(
        &["publish", "p", "--template-file", "/does/not/exist"],
        2,
        "--template-file /does/not/exist",
    );
    cli.fails(
        &["publish", "p", "--template", "x", "--tag", "novalue"],
        2,
        "KEY=VALUE",
    );
    cli.fails(
        &[
            "rollback",
            "support/triage",
            "--label",
            "latest",
            "--reason",
            "x",
        ],
        1,
        "cannot be moved by hand",
    );
    cli.fails(
        &["list", "--server", "http://127.0.0.1:1"],
        3,
        "cannot reach the registry",
    );

    // A second server on the same data directory refuses to start.
    let second = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(temp.path().join("data"))
        .output()
        .unwrap();
    assert_ne!(second.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another promptreg process"));

    // SIGTERM: a clean exit 0; JSON logs on the way.
    let log = server.stderr.clone();
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", log.lock().unwrap());
    let log = log.lock().unwrap().clone();
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "JSON logs: {log}"
    );

    // Everything is still there after the restart.
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let cli = Cli {
        url: server.url.clone(),
    };
    assert_eq!(
        cli.json(&["history", "support/triage", "--label", "production"])
            .len(),
        4
    );
}

#[test]
fn help_explains_every_subcommand() {
    let out = Command::new(binary()).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for sub in [
        "serve", "publish", "get", "list", "versions", "promote", "rollback", "unlabel", "history",
        "resolve", "diff",
    ] {
        assert!(help.contains(sub), "--help lists {sub}");
    }
    assert!(help.contains("Exit codes"));
    let mut child = Command::new(binary())
        .args(["serve", "--help"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut child, std::time::Duration::from_secs(30));
    assert!(status.success());
}

/// Runs the CLI against `url`; returns (exit code, stdout, stderr).
fn run_at(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = support::cli_command(url)
        .args(args)
        .env("USER", "oncall")
        .output()
        .expect("run promptreg");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `promptreg fleet` until `ready` holds for its JSON (60 s at most).
fn wait_for_fleet(cli: &Cli, name: &str, label: &str, ready: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let fleet = &cli.json(&["fleet", name, "--label", label])[0];
        if ready(fleet) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fleet never got there: {fleet}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn agent<'a>(fleet: &'a Value, id: &str) -> Option<&'a Value> {
    fleet["agents"]
        .as_array()?
        .iter()
        .find(|a| a["agent_id"] == id)
}

/// `promptreg watch` as an agent (`--ack`) or a silent watcher, killed at
/// the end of the test.
fn spawn_watcher(url: &str, name: &str, label: &str, id: &str, ack: bool) -> support::KillOnDrop {
    let mut command = support::cli_command(url);
    command
        .args(["watch", name, "--label", label, "--agent-id", id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if ack {
        command.arg("--ack");
    }
    support::KillOnDrop(command.spawn().expect("spawn watch"))
}

#[test]
fn a_move_whose_fleet_lags_is_printed_and_exits_4() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let cli = Cli {
        url: server.url.clone(),
    };
    let name = "support/triage";
    cli.ok(&["publish", name, "--template", "one"]);
    cli.ok(&["publish", name, "--template", "two"]);
    cli.ok(&[
        "promote",
        name,
        "1",
        "--label",
        "production",
        "--reason",
        "a",
    ]);
    cli.ok(&[
        "promote",
        name,
        "2",
        "--label",
        "production",
        "--reason",
        "b",
    ]);

    // An agent applies v2, then goes away.
    let gone = spawn_watcher(&cli.url, name, "production", "gone-1", true);
    wait_for_fleet(&cli, name, "production", |f| {
        agent(f, "gone-1").is_some_and(|a| a["in_sync"] == true)
    });
    drop(gone);
    wait_for_fleet(&cli, name, "production", |f| {
        agent(f, "gone-1").is_some_and(|a| a["connected"] == false)
    });

    // No connected agent: the rollback happened, and --wait says nobody
    // confirmed it, naming the disconnected agent; exit 4 at once.
    let (code, stdout, stderr) = run_at(
        &cli.url,
        &[
            "rollback",
            name,
            "--label",
            "production",
            "--reason",
            "INC-1",
            "--wait",
            "--timeout",
            "60s",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 4, "{stderr}");
    let moved: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{stdout}: {e}"));
    assert_eq!(
        (moved["from_version"].as_u64(), moved["to_version"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(moved["fleet"]["converged"], false);
    assert_eq!(moved["fleet"]["disconnected"][0]["agent_id"], "gone-1");
    assert_eq!(moved["fleet"]["disconnected"][0]["applied_version"], 2);
    assert!(
        stderr.contains("no connected agent") && stderr.contains("gone-1"),
        "{stderr}"
    );
    assert!(stderr.contains("the move happened"), "{stderr}");

    // A connected agent that does not apply it: --wait times out; the move
    // is printed first, then who lags and what they run.
    let _stale = spawn_watcher(&cli.url, name, "production", "stale-1", false);
    wait_for_fleet(&cli, name, "production", |f| {
        agent(f, "stale-1").is_some_and(|a| a["connected"] == true)
    });
    let (code, stdout, stderr) = run_at(
        &cli.url,
        &[
            "promote",
            name,
            "2",
            "--label",
            "production",
            "--reason",
            "again",
            "--wait",
            "--timeout",
            "300ms",
        ],
    );
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stdout.contains("support/triage production: v1 -> v2"),
        "{stdout}"
    );
    assert!(stdout.contains("fleet NOT converged"), "{stdout}");
    let header = stdout
        .lines()
        .position(|l| l.starts_with("AGENT "))
        .unwrap_or_else(|| panic!("no agent table: {stdout}"));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        header_of(lines[header]),
        ["AGENT", "STATE", "RUNS", "LAST SEEN", "REJECTED"],
        "{stdout}"
    );
    let row = |id: &str| -> Vec<&str> {
        let line = lines[header..]
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row for {id}: {stdout}"));
        header_of(line)
    };
    assert_eq!(row("stale-1")[..3], ["stale-1", "stale", "-"], "{stdout}");
    assert_eq!(
        row("gone-1")[..3],
        ["gone-1", "disconnected", "v2"],
        "{stdout}"
    );
    assert!(row("gone-1")[3].ends_with(" ago"), "{stdout}");
    assert!(
        stderr.contains("did not converge") && stderr.contains("1 stale agent"),
        "{stderr}"
    );

    let (code, stdout, stderr) = run_at(
        &cli.url,
        &[
            "rollback",
            name,
            "--label",
            "production",
            "--reason",
            "INC-2",
            "--wait",
            "--timeout",
            "300ms",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 4, "{stderr}");
    let moved: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{stdout}: {e}"));
    assert_eq!(moved["to_version"], 1);
    assert_eq!(moved["fleet"]["converged"], false);
    assert_eq!(moved["fleet"]["stale"][0]["agent_id"], "stale-1");
    assert_eq!(moved["fleet"]["stale"][0]["applied_version"], Value::Null);

    // A refusal changed nothing: exit 1, not 4.
    let (code, stdout, _) = run_at(
        &cli.url,
        &[
            "rollback", name, "--label", "latest", "--reason", "x", "--wait",
        ],
    );
    assert_eq!((code, stdout.as_str()), (1, ""));
}

#[test]
fn rollback_expect_is_a_compare_and_set() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let cli = Cli {
        url: server.url.clone(),
    };
    let name = "support/triage";
    cli.ok(&["publish", name, "--template", "one"]);
    cli.ok(&["publish", name, "--template", "two"]);
    cli.ok(&["publish", name, "--template", "three"]);
    for v in ["1", "2", "3"] {
        cli.ok(&[
            "promote",
            name,
            v,
            "--label",
            "production",
            "--reason",
            "up",
        ]);
    }
    let rollback = [
        "rollback",
        name,
        "--label",
        "production",
        "--reason",
        "INC-7",
        "--expect",
        "3",
    ];
    let moved = &cli.json(&rollback)[0];
    assert_eq!(
        (moved["from_version"].as_u64(), moved["to_version"].as_u64()),
        (Some(3), Some(2))
    );
    // The same command again (a retry after a timeout): refused, and the
    // label stays on v2 instead of going back to v1.
    cli.fails(
        &rollback,
        1,
        "points to version 2, not the expected version 3",
    );
    let now = &cli.json(&["resolve", name, "--label", "production"])[0];
    assert_eq!(now["version"], 2);
    assert_eq!(
        cli.json(&["history", name, "--label", "production"]).len(),
        4
    );
}

#[test]
fn server_addresses_and_why_they_cannot_be_reached() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let cli = Cli {
        url: server.url.clone(),
    };
    let host_port = server.url.trim_start_matches("http://").to_string();
    // HOST:PORT, the form other clients use, works.
    cli.ok(&["list", "--server", &host_port]);
    cli.ok(&["list", "--server", &server.url]);
    // https:// against a plaintext port says which it is.
    cli.fails(
        &["list", "--server", &format!("https://{host_port}")],
        3,
        "does not serve TLS on this port",
    );
    cli.fails(
        &["list", "--server", "127.0.0.1:1"],
        3,
        "connection refused",
    );
    cli.fails(
        &["list", "--server", "http://no-such-host.invalid:50051"],
        3,
        "name not resolved",
    );
}

/// A gRPC server that answers every call with UNAVAILABLE: up, reachable,
/// refusing.
#[derive(Clone)]
struct AlwaysUnavailable;

impl tower::Service<http::Request<tonic::body::Body>> for AlwaysUnavailable {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        std::future::ready(Ok(
            tonic::Status::unavailable("the store is not available").into_http()
        ))
    }
}

impl tonic::server::NamedService for AlwaysUnavailable {
    const NAME: &'static str = "promptreg.v1.Registry";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_answer_is_a_refusal_not_unreachable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AlwaysUnavailable)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (verify, list) = tokio::task::spawn_blocking(move || {
        (run_at(&url, &["audit", "verify"]), run_at(&url, &["list"]))
    })
    .await
    .unwrap();
    for (code, stdout, stderr) in [verify, list] {
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains("unavailable: the store is not available"),
            "{stderr}"
        );
        assert!(stdout.is_empty());
    }
}

#[test]
fn resolve_says_who_set_the_label_and_revision_means_the_move() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let cli = Cli {
        url: server.url.clone(),
    };
    let name = "support/triage";
    let v1 = &cli.json(&["publish", name, "--template", "one"])[0];
    cli.ok(&["publish", name, "--template", "two"]);
    cli.ok(&[
        "promote",
        name,
        "1",
        "--label",
        "production",
        "--reason",
        "first",
        "--actor",
        "sre",
    ]);
    for resolved in [
        &cli.json(&["resolve", name, "--label", "production"])[0],
        &cli.json(&["resolve", name, "--label", "production", "--revision", "3"])[0],
    ] {
        assert_eq!(resolved["version"], 1);
        assert_eq!(resolved["revision"], 3, "the move's revision: {resolved}");
        assert_eq!(resolved["published_revision"], v1["revision"], "{resolved}");
        assert_eq!(
            resolved["move"]["actor"], "admin",
            "the token's name, not --actor"
        );
    }
    let labels = cli.json(&["labels", name]);
    let production = labels.iter().find(|l| l["label"] == "production").unwrap();
    assert_eq!(production["revision"], 3);
    let text = cli.ok(&["resolve", name, "--label", "production"]);
    assert!(text.contains("set by: revision 3"), "{text}");
    assert!(text.contains("admin") && text.contains("first"), "{text}");
}

#[test]
fn audit_filters_and_times_are_checked() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let cli = Cli {
        url: server.url.clone(),
    };
    cli.ok(&["publish", "p", "--template", "one"]);
    cli.ok(&[
        "promote",
        "p",
        "1",
        "--label",
        "production",
        "--reason",
        "go",
    ]);
    cli.fails(
        &["audit", "--action-name", "publsh"],
        2,
        "publish, promote, rollback, remove, rotate_key",
    );
    let published = cli.json(&["audit", "--action-name", "publish"]);
    assert!(!published.is_empty() && published.iter().all(|e| e["action"] == "publish"));
    let all = cli.json(&["audit"]).len();
    assert_eq!(cli.json(&["audit", "--since", "1h"]).len(), all);
    assert_eq!(cli.json(&["audit", "--since", "1970-01-02"]).len(), all);
    assert_eq!(cli.json(&["audit", "--until", "2000-01-01"]).len(), 0);
    assert_eq!(cli.json(&["audit", "--until", "30m"]).len(), 0);
    for flag in ["--since", "--until"] {
        cli.fails(&["audit", flag, "yesterday"], 2, "RFC 3339");
        cli.fails(
            &["audit", flag, "2026-12"],
            2,
            "a duration before now (30m, 1h, 7d)",
        );
    }
    cli.fails(
        &["resolve", "p", "--label", "production", "--at", "soon"],
        2,
        "a date (2026-12-02",
    );
    // A duration ago works for --at too: an hour ago the label was not set.
    cli.fails(
        &["resolve", "p", "--label", "production", "--at", "1h"],
        1,
        "production",
    );
}

#[test]
fn digest_prefixes_find_a_version() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let cli = Cli {
        url: server.url.clone(),
    };
    let v1 = &cli.json(&["publish", "p", "--template", "one"])[0];
    cli.ok(&["publish", "p", "--template", "two"]);
    cli.ok(&["publish", "q", "--template", "other"]);
    let digest = v1["digest"].as_str().unwrap();
    let prefix = &digest[.."sha256:".len() + 8];
    let found = cli.json(&["whois", prefix]);
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0]["name"].as_str(), found[0]["version"].as_u64()),
        (Some("p"), Some(1))
    );
    assert_eq!(found[0]["digest"], digest);
    let got = &cli.json(&["get", "p", "--digest", prefix])[0];
    assert_eq!(
        (got["version"].as_u64(), got["digest"].as_str()),
        (Some(1), Some(digest))
    );
    let text = cli.ok(&["whois", &digest["sha256:".len()..][..12]]);
    assert!(text.contains("p v1"), "{text}");
    cli.fails(&["whois", &digest[..14]], 2, "at least 8 hex digits");
    cli.fails(
        &["whois", "sha256:00000000"],
        1,
        "no version has a digest starting with",
    );
    cli.fails(
        &["get", "q", "--digest", prefix],
        1,
        "no version has a digest starting with",
    );
}

/// Rewrites the signature of a stored version, the server stopped.
fn forge_signature(data_dir: &std::path::Path, name: &str, version: u64) {
    let db = support::open_store_directly(data_dir);
    let mut key = format!("v/{name}\0").into_bytes();
    key.extend_from_slice(&version.to_be_bytes());
    let raw = db.get(&key).unwrap().expect("version record");
    assert_eq!(raw[0], 1, "JSON record format");
    let mut record: Value = serde_json::from_slice(&raw[1..]).unwrap();
    let signature = record["signature"].as_str().unwrap().to_string();
    let flipped = if signature.starts_with('0') { "1" } else { "0" };
    record["signature"] = Value::String(format!("{flipped}{}", &signature[1..]));
    let mut value = vec![1u8];
    value.extend_from_slice(record.to_string().as_bytes());
    db.insert(&key, value).unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ack_checks_the_signature_and_says_what_it_applied() {
    use std::io::BufRead as _;
    let server = support::TestServer::start().await;
    let mut client = server.client().await;
    support::publish(&mut client, "p", "one").await;
    support::publish(&mut client, "p", "two").await;
    client
        .set_label(support::set_label("p", "production", 1, None))
        .await
        .unwrap();
    drop(client);
    let mut server = server;
    server.stop().await;
    forge_signature(&server.data_dir, "p", 2);
    let server = server.restart().await;
    let mut client = server.client().await;

    let mut watcher = support::cli_command(&server.url)
        .args([
            "watch",
            "p",
            "--label",
            "production",
            "--ack",
            "--agent-id",
            "a1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watcher.stdout.take().unwrap();
    let _watcher = support::KillOnDrop(watcher);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let next_line_with = |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    };
    let line = next_line_with("p production v1");
    assert!(
        line.starts_with("applied") && line.contains("valid Ed25519 signature"),
        "{line}"
    );

    // v2's content is intact but its signature is not: rejected, and said so.
    client
        .set_label(support::set_label("p", "production", 2, Some(1)))
        .await
        .unwrap();
    let line = next_line_with("p production v2");
    assert!(
        line.starts_with("rejected") && line.contains("signature"),
        "{line}"
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = client
            .fleet_status(promptreg::grpc::pb::FleetStatusRequest {
                name: "p".into(),
                label: "production".into(),
                summary_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        let a1 = status.agents.iter().find(|a| a.agent_id == "a1");
        if let Some(a1) = a1.filter(|a| a.rejected_version == 2) {
            assert!(a1.rejected_reason.contains("signature"), "{a1:?}");
            assert_eq!(a1.applied_version, 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[test]
fn publish_reads_stdin_and_a_model_config_file() {
    use std::io::Write as _;
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let cli = Cli {
        url: server.url.clone(),
    };
    let config = temp.path().join("model.json");
    std::fs::write(&config, r#"{"model":"m","temperature":0.3}"#).unwrap();
    let mut child = support::cli_command(&cli.url)
        .args(["publish", "p", "--template-file", "-", "--var", "product"])
        .args([
            "--model-config-file",
            config.to_str().unwrap(),
            "-o",
            "json",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"From stdin about {{product}}.\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = &cli.json(&["get", "p", "--version", "1"])[0];
    assert_eq!(got["template"]["text"], "From stdin about {{product}}.\n");
    assert_eq!(got["model_config"]["temperature"], 0.3);
    cli.fails(
        &[
            "publish",
            "p",
            "--template",
            "x",
            "--model-config-file",
            "/does/not/exist",
        ],
        2,
        "--model-config-file /does/not/exist",
    );
    cli.fails(
        &[
            "publish",
            "p",
            "--template",
            "x",
            "--model-config",
            "{}",
            "--model-config-file",
            "f",
        ],
        2,
        "cannot be used with",
    );
}

/// The actor recorded is the token's name: not `--actor`, not `--author`,
/// not the local user. Also `tokens create`, `whoami`, `tokens list` and
/// `tokens revoke` end to end.
#[test]
fn the_recorded_actor_is_the_tokens_name() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let run_with = |token: Option<&str>, args: &[&str]| {
        let mut command = support::cli_command(&server.url);
        if let Some(token) = token {
            command.env("PROMPTREG_TOKEN", token);
        }
        command.args(args).output().unwrap()
    };
    let ok = |token: Option<&str>, args: &[&str]| {
        let out = run_with(token, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let created: Value = serde_json::from_str(
        ok(
            None,
            &[
                "tokens", "create", "pager", "--role", "deployer", "-o", "json",
            ],
        )
        .trim(),
    )
    .unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("prt_"), "{created}");
    assert_eq!(created["token"]["bindings"][0]["role"], "deployer");
    let pager = Some(secret.as_str());

    let me: Value = serde_json::from_str(ok(pager, &["whoami", "-o", "json"]).trim()).unwrap();
    assert_eq!(me["principal"], "pager");
    assert_eq!(me["credential"], "token");

    ok(
        pager,
        &["publish", "p", "--template", "one", "--author", "mallory"],
    );
    ok(
        pager,
        &[
            "promote",
            "p",
            "1",
            "--label",
            "production",
            "--reason",
            "go",
            "--actor",
            "mallory",
        ],
    );
    let version: Value =
        serde_json::from_str(ok(pager, &["get", "p", "-o", "json"]).trim()).unwrap();
    assert_eq!(version["author"], "pager");
    let history: Value = serde_json::from_str(
        ok(
            pager,
            &["history", "p", "--label", "production", "-o", "json"],
        )
        .trim(),
    )
    .unwrap();
    assert_eq!(history["actor"], "pager");

    // A deployer is not an admin; the listing names tokens, never secrets.
    let denied = run_with(pager, &["tokens", "list"]);
    assert_eq!(denied.status.code(), Some(1));
    let why = String::from_utf8_lossy(&denied.stderr);
    assert!(
        why.contains("permission denied") && why.contains("admin"),
        "{why}"
    );
    let listing = ok(None, &["tokens", "list"]);
    assert!(
        listing.contains("pager") && listing.contains("admin"),
        "{listing}"
    );
    assert!(!listing.contains(&secret), "{listing}");

    ok(None, &["tokens", "revoke", "pager", "--reason", "test"]);
    let revoked = run_with(pager, &["list"]);
    assert_eq!(revoked.status.code(), Some(1));
    let why = String::from_utf8_lossy(&revoked.stderr);
    assert!(why.contains("unauthenticated"), "{why}");
    let none = support::cli_command(&server.url)
        .env_remove("PROMPTREG_TOKEN")
        .args(["list"])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("requires a token"));
}

/// The first line of `text` split into its column names.
fn header_of(text: &str) -> Vec<&str> {
    text.lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn text_listings_are_tables_with_short_digests_and_json_keeps_them_full() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let cli = Cli {
        url: server.url.clone(),
    };
    let v1 = &cli.json(&["publish", "p", "--template", "one"])[0];
    let full = v1["digest"].as_str().unwrap().to_string();
    let short = &full[.."sha256:".len() + 12];
    let verified = cli.ok(&["audit", "verify"]);
    assert!(verified.contains(", 1 version checked"), "{verified}");
    cli.ok(&[
        "publish",
        "p",
        "--template",
        "two",
        "--description",
        "the second",
    ]);
    cli.ok(&[
        "promote", "p", "1", "--label", "prod", "--reason", "first go",
    ]);
    let verified = cli.ok(&["audit", "verify"]);
    assert!(verified.contains(", 2 versions checked"), "{verified}");

    let listings: [(&[&str], &[&str]); 6] = [
        (&["list"], &["NAME", "LATEST", "DIGEST", "UPDATED"]),
        (
            &["versions", "p"],
            &[
                "VERSION",
                "DIGEST",
                "CREATED",
                "AUTHOR",
                "CHECKS",
                "DESCRIPTION",
            ],
        ),
        (
            &["labels", "p"],
            &["LABEL", "VERSION", "DIGEST", "REVISION", "UPDATED"],
        ),
        (
            &["history", "p", "--label", "prod"],
            &[
                "REVISION", "TIME", "KIND", "MOVE", "DIGEST", "ACTOR", "TRACE", "REASON",
            ],
        ),
        (
            &["audit", "--prompt", "p"],
            &[
                "SEQ", "REVISION", "TIME", "ACTOR", "ACTION", "TARGET", "DETAIL", "TRACE", "REASON",
            ],
        ),
        (&["keys"], &["KEY", "STATE", "CREATED", "PUBLIC KEY"]),
    ];
    for (args, header) in listings {
        let text = cli.ok(args);
        assert_eq!(header_of(&text), header, "{args:?}:\n{text}");
        assert!(
            !text.contains(&full),
            "{args:?} shows a full digest:\n{text}"
        );
        // Every row's cells start where the header's do.
        let first = text.lines().next().unwrap();
        let second_column = first.find(header[1]).unwrap();
        for row in text.lines().skip(1) {
            assert_eq!(
                row.chars().nth(second_column - 1),
                Some(' '),
                "{args:?}: row not aligned:\n{text}"
            );
        }
    }
    let versions = cli.ok(&["versions", "p"]);
    let row = versions.lines().find(|l| l.starts_with("v1 ")).unwrap();
    assert!(row.contains(&format!("{short} ")), "{versions}");
    assert!(versions.contains("the second"), "{versions}");
    let history = cli.ok(&["history", "p", "--label", "prod"]);
    assert!(
        history.contains(short) && history.contains("- -> v1") && history.contains("first go"),
        "{history}"
    );
    for args in [&["get", "p", "--version", "1"][..], &["whois", &full]] {
        let text = cli.ok(args);
        assert!(
            text.contains(short) && !text.contains(&full),
            "{args:?}: {text}"
        );
    }
    let whois = cli.ok(&["whois", &full]);
    let periods = whois.split_once('\n').map(|(_, t)| t).unwrap_or_default();
    assert_eq!(
        header_of(periods),
        [
            "LABEL",
            "FROM",
            "FROM REVISION",
            "UNTIL",
            "UNTIL REVISION",
            "SET BY",
            "TRACE",
            "REASON"
        ],
        "{whois}"
    );
    assert!(
        periods
            .lines()
            .any(|l| l.starts_with("prod ") && l.contains("now") && l.ends_with("first go")),
        "{whois}"
    );
    // The short form is pasteable: whois and get --digest take it back.
    let found = cli.json(&["whois", short]);
    assert_eq!(
        (found[0]["name"].as_str(), found[0]["version"].as_u64()),
        (Some("p"), Some(1))
    );
    let got = cli.ok(&["get", "p", "--digest", short]);
    assert!(got.starts_with("p v1 "), "{got}");

    // -o is --output; JSON keeps full digests, one object per line, no header.
    let json = cli.ok(&["versions", "p", "-o", "json"]);
    let rows: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{json}");
    assert_eq!(rows[1]["digest"], full.as_str());
    let labels = cli.ok(&["labels", "p", "-o", "json"]);
    assert!(
        labels.contains(&full) && !labels.contains("LABEL"),
        "{labels}"
    );

    let empty = cli.ok(&["list", "nothing/"]);
    assert_eq!(empty.trim(), "no prompts");
}

#[test]
fn fleet_text_counts_agents_and_says_how_long_ago_they_were_seen() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let cli = Cli {
        url: server.url.clone(),
    };
    cli.ok(&["publish", "p", "--template", "one"]);
    cli.ok(&["promote", "p", "1", "--label", "prod", "--reason", "go"]);
    let text = cli.ok(&["fleet", "p", "--label", "prod"]);
    assert!(text.starts_with("p prod: 0 agents: "), "{text}");

    let _first = spawn_watcher(&server.url, "p", "prod", "agent-1", true);
    wait_for_fleet(&cli, "p", "prod", |f| {
        agent(f, "agent-1").is_some_and(|a| a["in_sync"] == true)
    });
    let text = cli.ok(&["fleet", "p", "--label", "prod"]);
    assert!(text.starts_with("p prod: 1 agent: 1 in sync"), "{text}");
    let table = text.split_once('\n').map(|(_, t)| t).unwrap_or_default();
    assert_eq!(
        header_of(table),
        [
            "AGENT",
            "STATE",
            "APPLIED",
            "TARGET",
            "LAST SEEN",
            "REJECTED"
        ],
        "{text}"
    );
    let row = table.lines().find(|l| l.starts_with("agent-1")).unwrap();
    assert!(row.contains("in sync") && row.contains("v1"), "{text}");
    let age = row.rsplit("  ").next().unwrap().trim();
    assert!(
        age.ends_with(" s ago") || age.ends_with(" min ago"),
        "a relative age, not a time: {text}"
    );
    // JSON keeps the absolute time.
    let fleet = &cli.json(&["fleet", "p", "--label", "prod"])[0];
    let seen = agent(fleet, "agent-1").unwrap()["last_seen"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(seen.contains('T') && seen.ends_with('Z'), "{fleet}");

    let _second = spawn_watcher(&server.url, "p", "prod", "agent-2", true);
    wait_for_fleet(&cli, "p", "prod", |f| {
        agent(f, "agent-2").is_some_and(|a| a["in_sync"] == true)
    });
    let text = cli.ok(&["fleet", "p", "--label", "prod", "-o", "text"]);
    assert!(text.starts_with("p prod: 2 agents: 2 in sync"), "{text}");
}

#[test]
fn completion_prints_a_script_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(binary())
            .args(["completion", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["promptreg", "publish", "rollback", "fleet", "--output"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let out = Command::new(binary())
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'tcsh'") && stderr.contains("bash, zsh, fish"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let help = Command::new(binary())
        .args(["completion", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains("~/.config/fish/completions/promptreg.fish")
            && help.contains("bash-completion"),
        "{help}"
    );
}
