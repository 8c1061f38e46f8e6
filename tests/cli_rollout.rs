//! The rollout commands through the real binary: `rollout start` and what
//! `rollout status` shows, every manual verb, a protected label's promotion
//! request, bad `--steps` and `--guardrail` refused before anything is
//! sent, `report` counted per arm, `get --agent-id` on either side of the
//! weight, and the arm column of `fleet`.
//!
//! Agents are `promptreg watch --ack --agent-id ID` processes. Their
//! buckets under salt `s1` are the proto's test vectors: agent-0 5760,
//! agent-1 9993; so at 60% (6000 bp) agent-0 is on the candidate and
//! agent-1 on the stable version, and at 100% both are on the candidate.

mod support;

use serde_json::Value;
use std::process::Output;
use std::time::{Duration, Instant};
use support::{KillOnDrop, ServerProcess};

const NAME: &str = "support/triage";
const LABEL: &str = "production";
/// Generous: the machine running the tests may be loaded.
const PATIENCE: Duration = Duration::from_secs(90);

struct Cli {
    url: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        support::cli_command(&self.url)
            .args(args)
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
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Runs and expects exit 5 (a promotion request was made instead);
    /// returns stdout.
    fn pending(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {stderr}");
        assert!(stderr.contains("awaits approval"), "{args:?}: {stderr}");
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Runs with `--output json` and parses the one object printed.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let out = self.ok(&args);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?}: {e}"))
    }

    /// Runs and expects `code`, with stderr mentioning `needle` and
    /// nothing on stdout.
    fn fails(&self, args: &[&str], code: i32, needle: &str) {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr {stderr:?} should mention {needle:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }

    fn status(&self) -> Value {
        self.json(&["rollout", "status", NAME, "--label", LABEL])
    }

    fn verb(&self, verb: &str, reason: &str) -> String {
        self.ok(&["rollout", verb, NAME, "--label", LABEL, "--reason", reason])
    }

    fn fleet(&self) -> Value {
        self.json(&["fleet", NAME, "--label", LABEL])
    }

    /// `get --label --agent-id`, as JSON; `resolve --agent-id` must agree.
    fn get_for(&self, agent: &str) -> Value {
        let got = self.json(&["get", NAME, "--label", LABEL, "--agent-id", agent]);
        let resolved = self.json(&["resolve", NAME, "--label", LABEL, "--agent-id", agent]);
        assert_eq!(got, resolved, "get and resolve disagree for {agent}");
        got
    }
}

/// Two versions, `production` on v1.
fn two_versions(cli: &Cli) {
    cli.ok(&["publish", NAME, "--template", "one"]);
    cli.ok(&["publish", NAME, "--template", "two"]);
    cli.ok(&["promote", NAME, "1", "--label", LABEL, "--reason", "first"]);
}

/// Polls `probe` until it holds (PATIENCE at most); `what` names it.
fn wait_for(what: &str, mut probe: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match probe() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => panic!("never {what}: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn agent<'a>(fleet: &'a Value, id: &str) -> &'a Value {
    fleet["agents"]
        .as_array()
        .and_then(|all| all.iter().find(|a| a["agent_id"] == id))
        .unwrap_or(&Value::Null)
}

fn arm<'a>(status: &'a Value, which: &str) -> &'a Value {
    status["arms"]
        .as_array()
        .and_then(|all| all.iter().find(|a| a["arm"] == which))
        .unwrap_or(&Value::Null)
}

/// `promptreg watch --ack` as agent `id`, killed at the end of the test.
fn spawn_agent(url: &str, id: &str) -> KillOnDrop {
    let child = support::cli_command(url)
        .args(["watch", NAME, "--label", LABEL, "--ack", "--agent-id", id])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn watch");
    KillOnDrop(child)
}

/// The column names of a table's header line.
fn header_of(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn the_salt_puts_the_agents_where_the_proto_says() {
    use promptreg::domain::rollout::bucket;
    assert_eq!(bucket("s1", "agent-0"), 5760);
    assert_eq!(bucket("s1", "agent-1"), 9993);
}

#[test]
fn bad_steps_and_guardrails_are_refused_before_anything_is_sent() {
    // Nothing listens there: exit 2 (usage), not 3, shows nothing was sent.
    let cli = Cli {
        url: "http://127.0.0.1:1".to_string(),
    };
    let start = |steps: &str, guardrail: &str| {
        let mut args = vec![
            "rollout",
            "start",
            NAME,
            "--label",
            LABEL,
            "--candidate",
            "2",
            "--steps",
            steps,
            "--bake",
            "10m",
            "--reason",
            "canary",
        ];
        if !guardrail.is_empty() {
            args.extend(["--guardrail", guardrail]);
        }
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let refused = |args: Vec<String>, needle: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli.fails(&args, 2, needle);
    };
    refused(start("5%,1%,100%", ""), "1% comes after 5%");
    refused(start("1%,5%,50%", ""), "the last step is 50%, not 100%");
    refused(start("0.001%,100%", ""), "finer than 0.01% (1 basis point)");
    refused(start("1,5,100%", ""), "mixes percentages and bare numbers");
    refused(start("five%,100%", ""), "is not a step");
    refused(start("1%,100%", "errors<=0.1"), "is not a guardrail");
    refused(start("1%,100%", "error_rate<0.1"), "METRIC<=VALUE");
    refused(start("1%,100%", "error_rate<=2"), "out of range");
    let mut bake = start("1%,100%", "");
    bake[10] = "1500ms".to_string();
    refused(bake, "whole number of seconds");
    cli.fails(
        &[
            "report",
            NAME,
            "--label",
            LABEL,
            "--agent-id",
            "a",
            "--version",
            "1",
        ],
        2,
        "--requests",
    );
}

#[test]
fn help_explains_every_rollout_flag() {
    let cli = Cli {
        url: "http://127.0.0.1:1".to_string(),
    };
    let help = cli.ok(&["rollout", "start", "--help"]);
    for flag in [
        "--candidate",
        "--steps",
        "--bake",
        "--guardrail",
        "--max-error-rate-increase",
        "--min-samples",
        "--max-extensions",
        "--pause-when-inconclusive",
        "--salt",
        "--sticky-by",
        "--reason",
        "basis points",
        "latency_p95_ms",
    ] {
        assert!(
            help.contains(flag),
            "rollout start --help lacks {flag}: {help}"
        );
    }
    let help = cli.ok(&["rollout", "--help"]);
    for verb in [
        "start", "status", "pause", "resume", "abort", "advance", "promote",
    ] {
        assert!(help.contains(verb), "rollout --help lacks {verb}: {help}");
    }
    let help = cli.ok(&["report", "--help"]);
    for flag in ["--agent-id", "--latency-buckets", "--safety-violations"] {
        assert!(help.contains(flag), "report --help lacks {flag}: {help}");
    }
    assert!(cli.ok(&["get", "--help"]).contains("--agent-id"));
}

#[test]
fn start_status_and_every_verb_as_status_shows_them() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let cli = Cli {
        url: server.url.clone(),
    };
    two_versions(&cli);
    cli.fails(
        &["rollout", "status", NAME, "--label", LABEL],
        1,
        "not found",
    );
    // The server's own rules show through as it words them.
    cli.fails(
        &[
            "rollout",
            "start",
            NAME,
            "--label",
            LABEL,
            "--candidate",
            "2",
            "--steps",
            "100%",
            "--bake",
            "0s",
            "--reason",
            "r",
        ],
        1,
        "invalid argument: spec.bake_seconds",
    );

    let started = cli.ok(&[
        "rollout",
        "start",
        NAME,
        "--label",
        LABEL,
        "--candidate",
        "2",
        "--steps",
        "1%,5%,25%,100%",
        "--bake",
        "10m",
        "--guardrail",
        "error_rate<=0.02",
        "--guardrail",
        "latency_p95_ms<=800",
        "--max-error-rate-increase",
        "0.01",
        "--min-samples",
        "50",
        "--max-extensions",
        "2",
        "--pause-when-inconclusive",
        "--salt",
        "s1",
        "--reason",
        "canary v2",
    ]);
    assert!(
        started.contains("rollout 1 started: running at 1% (step 1/4)"),
        "{started}"
    );
    let text = cli.ok(&["rollout", "status", NAME, "--label", LABEL]);
    for needle in [
        "rollout 1 running at 1% (step 1/4), v1 stable",
        "-> v2 candidate",
        "steps 1%, 5%, 25%, 100%; bake 10m",
        "guardrails: error_rate<=0.02, latency_p95_ms<=800",
        "max error rate increase: 0.01",
        "min samples 50; extensions 0 of 2 (then pause); salt s1",
        "decision log (newest first):",
        "canary v2",
    ] {
        assert!(text.contains(needle), "status lacks {needle:?}:\n{text}");
    }
    let status = cli.status();
    let rollout = &status["rollout"];
    assert_eq!(
        (
            rollout["state"].as_str(),
            rollout["step"].as_u64(),
            rollout["steps"].as_u64(),
            rollout["weight_bp"].as_u64(),
            rollout["weight"].as_str(),
        ),
        (Some("running"), Some(1), Some(4), Some(100), Some("1%"))
    );
    assert_eq!(rollout["stable"]["version"], 1);
    assert_eq!(rollout["candidate"]["version"], 2);
    assert_eq!(
        rollout["spec"]["steps_bp"],
        serde_json::json!([100, 500, 2500, 10_000])
    );
    assert_eq!(rollout["spec"]["guardrails"][1]["metric"], "latency_p95_ms");
    assert_eq!(arm(&status, "candidate")["version"], 2);
    assert_eq!(status["log"][0]["reason"], "canary v2");

    cli.fails(
        &[
            "rollout",
            "start",
            NAME,
            "--label",
            LABEL,
            "--candidate",
            "2",
            "--steps",
            "100%",
            "--bake",
            "1h",
            "--reason",
            "again",
        ],
        1,
        "failed precondition",
    );

    let paused = cli.verb("pause", "looking at a graph");
    assert!(
        paused.contains("rollout 1 paused: paused at 1%"),
        "{paused}"
    );
    assert_eq!(cli.status()["rollout"]["state"], "paused");
    cli.verb("resume", "graph is fine");
    assert_eq!(cli.status()["rollout"]["state"], "running");
    let advanced = cli.verb("advance", "enough at 1%");
    assert!(advanced.contains("running at 5% (step 2/4)"), "{advanced}");
    let status = cli.status();
    assert_eq!(
        (
            status["rollout"]["step"].as_u64(),
            status["rollout"]["weight_bp"].as_u64()
        ),
        (Some(2), Some(500))
    );
    let promoted = cli.verb("promote", "ship it");
    assert!(
        promoted.contains("completed: the label points to v2"),
        "{promoted}"
    );
    let status = cli.status();
    assert_eq!(status["rollout"]["state"], "completed");
    // `status --watch` returns by itself once the rollout has ended.
    let watched = cli.ok(&[
        "rollout",
        "status",
        NAME,
        "--label",
        LABEL,
        "--watch",
        "--interval",
        "100ms",
    ]);
    assert!(watched.contains("completed"), "{watched}");
    let reasons: Vec<&str> = status["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["reason"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        reasons,
        [
            "ship it",
            "enough at 1%",
            "graph is fine",
            "looking at a graph",
            "canary v2"
        ],
        "newest first"
    );
    assert_eq!(status["log"][0]["kind"], "promote");
    let resolved = cli.json(&["resolve", NAME, "--label", LABEL]);
    assert_eq!(resolved["version"], 2);
    cli.fails(
        &[
            "rollout", "abort", NAME, "--label", LABEL, "--reason", "late",
        ],
        1,
        "failed precondition",
    );

    // A blue-green switch back to v1, aborted: the label stays on v2.
    cli.ok(&[
        "rollout",
        "start",
        NAME,
        "--label",
        LABEL,
        "--to",
        "1",
        "--steps",
        "100%",
        "--bake",
        "1h",
        "--reason",
        "blue-green",
    ]);
    let aborted = cli.verb("abort", "not today");
    assert!(
        aborted.contains("rollout 2 aborted: aborted: every agent is back on v2"),
        "{aborted}"
    );
    let status = cli.status();
    assert_eq!(status["rollout"]["state"], "aborted");
    assert_eq!(status["arms"], serde_json::json!([]));
    assert_eq!(cli.json(&["resolve", NAME, "--label", LABEL])["version"], 2);

    // A protected label: the answer is a promotion request, and exit 5 (as
    // `promote` there): the request on stdout, why on stderr.
    cli.ok(&["promote", NAME, "1", "--label", "eu", "--reason", "first"]);
    cli.ok(&[
        "policy",
        "set",
        "",
        "--label",
        "eu",
        "--approvals",
        "1",
        "--reason",
        "four eyes",
    ]);
    let asked = cli.pending(&[
        "rollout",
        "start",
        NAME,
        "--label",
        "eu",
        "--candidate",
        "2",
        "--steps",
        "100%",
        "--bake",
        "10m",
        "--reason",
        "blue-green",
    ]);
    assert!(
        asked.contains("is protected: the rollout did not start. Promotion request 1")
            && asked.contains("the rollout starts once it is approved"),
        "{asked}"
    );
    cli.fails(
        &["rollout", "status", NAME, "--label", "eu"],
        1,
        "not found",
    );
}

#[test]
fn agents_resolve_report_and_show_their_arm() {
    let temp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&temp.path().join("data"), &[]);
    let cli = Cli {
        url: server.url.clone(),
    };
    two_versions(&cli);
    let _agents = [
        spawn_agent(&cli.url, "agent-0"),
        spawn_agent(&cli.url, "agent-1"),
    ];
    wait_for("both agents run v1", || {
        let fleet = cli.fleet();
        let on_v1 = |id| agent(&fleet, id)["applied_version"] == 1;
        (on_v1("agent-0") && on_v1("agent-1"))
            .then_some(())
            .ok_or(fleet.to_string())
    });
    let text = cli.ok(&["fleet", NAME, "--label", LABEL]);
    let header = text.lines().nth(1).unwrap_or_default();
    assert!(
        !header_of(header).contains(&"ARM"),
        "no rollout, no arm: {text}"
    );
    assert_eq!(agent(&cli.fleet(), "agent-0")["arm"], Value::Null);

    cli.ok(&[
        "rollout",
        "start",
        NAME,
        "--label",
        LABEL,
        "--candidate",
        "2",
        "--steps",
        "60%,100%",
        "--bake",
        "1d",
        "--salt",
        "s1",
        "--reason",
        "canary",
    ]);
    let on = cli.get_for("agent-0");
    assert_eq!(
        (
            on["version"].as_u64(),
            on["arm"].as_str(),
            on["rollout_id"].as_u64()
        ),
        (Some(2), Some("candidate"), Some(1))
    );
    let off = cli.get_for("agent-1");
    assert_eq!(
        (off["version"].as_u64(), off["arm"].as_str()),
        (Some(1), Some("stable"))
    );
    let text = cli.ok(&["get", NAME, "--label", LABEL, "--agent-id", "agent-0"]);
    assert!(
        text.starts_with(&format!("{NAME} v2 "))
            && text.contains("arm: candidate (rollout 1, agent agent-0)"),
        "{text}"
    );

    wait_for("each agent runs its arm's version", || {
        let fleet = cli.fleet();
        let (a0, a1) = (agent(&fleet, "agent-0"), agent(&fleet, "agent-1"));
        let done = a0["arm"] == "candidate"
            && a0["applied_version"] == 2
            && a0["in_sync"] == true
            && a1["arm"] == "stable"
            && a1["applied_version"] == 1
            && a1["in_sync"] == true;
        done.then_some(()).ok_or(fleet.to_string())
    });
    let text = cli.ok(&["fleet", NAME, "--label", LABEL]);
    let mut lines = text.lines().skip(1);
    let header = header_of(lines.next().unwrap_or_default());
    assert_eq!(
        header,
        [
            "AGENT",
            "STATE",
            "ARM",
            "APPLIED",
            "TARGET",
            "LAST SEEN",
            "REJECTED"
        ],
        "{text}"
    );
    let row = |id: &str| {
        let line = text.lines().find(|l| l.starts_with(id)).unwrap_or_default();
        header_of(line).get(2).map(|c| c.to_string())
    };
    assert_eq!(row("agent-0").as_deref(), Some("candidate"), "{text}");
    assert_eq!(row("agent-1").as_deref(), Some("stable"), "{text}");

    wait_for("both arms have their agent, acknowledged", || {
        let status = cli.status();
        let acked = |which| {
            let a = arm(&status, which);
            a["agents_assigned"] == 1 && a["agents_acknowledged"] == 1
        };
        (acked("stable") && acked("candidate") && !status["exposed_at"].is_null())
            .then_some(())
            .ok_or(status.to_string())
    });

    let counted = cli.ok(&[
        "report",
        NAME,
        "--label",
        LABEL,
        "--agent-id",
        "agent-0",
        "--version",
        "2",
        "--requests",
        "10",
        "--errors",
        "1",
        "--latency-ms-sum",
        "1200",
        "--latency-buckets",
        "0,0,0,0,5,5,0,0,0,0,0,0",
    ]);
    assert!(
        counted.contains("counted in rollout 1, candidate arm: 10 requests from agent-0 on v2"),
        "{counted}"
    );
    let stable = cli.json(&[
        "report",
        NAME,
        "--label",
        LABEL,
        "--agent-id",
        "agent-1",
        "--version",
        "1",
        "--requests",
        "20",
    ]);
    assert_eq!(
        (stable["rollout_id"].as_u64(), stable["arm"].as_str()),
        (Some(1), Some("stable"))
    );
    let apart = cli.ok(&[
        "report",
        NAME,
        "--label",
        LABEL,
        "--agent-id",
        "agent-1",
        "--version",
        "2",
        "--requests",
        "5",
    ]);
    assert!(apart.contains("counted apart in rollout 1"), "{apart}");
    cli.fails(
        &[
            "report",
            NAME,
            "--label",
            LABEL,
            "--agent-id",
            "agent-0",
            "--version",
            "2",
            "--requests",
            "10",
            "--latency-buckets",
            "1,2",
        ],
        1,
        "invalid argument: latency_buckets",
    );
    let status = cli.status();
    let candidate = arm(&status, "candidate");
    assert_eq!(
        (candidate["requests"].as_u64(), candidate["errors"].as_u64()),
        (Some(10), Some(1)),
        "{status}"
    );
    assert_eq!(candidate["error_rate"].as_f64(), Some(0.1), "{status}");
    assert_eq!(
        candidate["latency_p95_ms"].as_f64(),
        Some(250.0),
        "{status}"
    );
    assert_eq!(arm(&status, "stable")["requests"], 20, "{status}");
    assert_eq!(status["unassigned_reports"], 1, "{status}");
    let text = cli.ok(&["rollout", "status", NAME, "--label", LABEL]);
    let candidate_row = text
        .lines()
        .find(|l| l.starts_with("candidate"))
        .unwrap_or_default();
    assert!(
        candidate_row.contains("10.00% (") && candidate_row.contains("250 ms"),
        "{text}"
    );

    // At 100% everyone is on the candidate.
    cli.verb("advance", "all in");
    let both = cli.get_for("agent-1");
    assert_eq!(
        (both["version"].as_u64(), both["arm"].as_str()),
        (Some(2), Some("candidate"))
    );
    wait_for("agent-1 moves to the candidate", || {
        let fleet = cli.fleet();
        let a1 = agent(&fleet, "agent-1");
        (a1["arm"] == "candidate" && a1["applied_version"] == 2)
            .then_some(())
            .ok_or(fleet.to_string())
    });

    // Aborted: no arms any more, and reports are dropped.
    cli.verb("abort", "seen enough");
    let back = cli.get_for("agent-0");
    assert_eq!(
        (back["version"].as_u64(), back["arm"].clone()),
        (Some(1), Value::Null)
    );
    wait_for("the fleet has no arms", || {
        let fleet = cli.fleet();
        let none = fleet["agents"]
            .as_array()
            .is_some_and(|all| all.iter().all(|a| a["arm"].is_null()));
        none.then_some(()).ok_or(fleet.to_string())
    });
    let text = cli.ok(&["fleet", NAME, "--label", LABEL]);
    assert!(
        !header_of(text.lines().nth(1).unwrap_or_default()).contains(&"ARM"),
        "{text}"
    );
    let dropped = cli.ok(&[
        "report",
        NAME,
        "--label",
        LABEL,
        "--agent-id",
        "agent-0",
        "--version",
        "1",
        "--requests",
        "3",
    ]);
    assert!(dropped.starts_with("dropped: no rollout"), "{dropped}");
}
