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
        Command::new(binary())
            .args(args)
            .env("PROMPTREG_SERVER", &self.url)
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
    assert_eq!(history[0]["actor"], "pager");
    assert_eq!(
        history[1]["actor"], "oncall",
        "--actor defaults to the local user"
    );
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
