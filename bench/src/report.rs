//! The summary of an `all` run: one flat JSON object with the headline
//! figures (the keys bench/results/latest.json promises), the machine, the
//! CPU each side used, and every scenario's full result; and the markdown
//! tables printed from it.

use crate::scenarios::Options;
use serde_json::{json, Value};

/// A number at a JSON pointer, or NaN.
fn num(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

/// The cell of `cells` whose `key` equals `want`, or Null.
fn cell<'a>(cells: &'a Value, key: &str, want: u64) -> &'a Value {
    cells
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c[key].as_u64() == Some(want)))
        .unwrap_or(&Value::Null)
}

/// The restart of the storm stopped with `stop` ("SIGKILL", "SIGTERM"), or
/// Null.
fn restart<'a>(storm: &'a Value, stop: &str) -> &'a Value {
    storm["restarts"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["stop"] == stop))
        .unwrap_or(&Value::Null)
}

/// Builds the summary from `{fanout, converge, storm, resolve, write,
/// rollout, etcd, memory}`.
pub fn summary(opts: &Options, r: &Value, harness_cpu_s: f64) -> Value {
    let f = &r["fanout"];
    let ro = &r["rollout"];
    let ro1 = cell(&ro["cells"], "concurrency", 1);
    let ro64 = cell(&ro["cells"], "concurrency", 64);
    let e = &r["etcd"];
    let st = &r["storm"];
    let kill = restart(st, "SIGKILL");
    let term = restart(st, "SIGTERM");
    let w1 = cell(&r["write"]["cells"], "writers", 1);
    let w64 = cell(&r["write"]["cells"], "writers", 64);
    let p1 = cell(&e["put"]["cells"], "writers", 1);
    let p64 = cell(&e["put"]["cells"], "writers", 64);
    let mut s = json!({
        "watchers": opts.watchers,
        "connections": opts.connections,
        "promotes": opts.promotes,
        "fanout_p50_ms": num(f, "/delivery/p50_ms"),
        "fanout_p99_ms": num(f, "/delivery/p99_ms"),
        "fanout_max_ms": num(f, "/delivery/max_ms"),
        "fanout_last_p50_ms": num(f, "/last_watcher/p50_ms"),
        "fanout_last_p99_ms": num(f, "/last_watcher/p99_ms"),
        "fanout_correct": f["correct"],
        "etcd_fanout_p50_ms": num(e, "/fanout/delivery/p50_ms"),
        "etcd_fanout_p99_ms": num(e, "/fanout/delivery/p99_ms"),
        "etcd_fanout_max_ms": num(e, "/fanout/delivery/max_ms"),
        "etcd_fanout_last_p50_ms": num(e, "/fanout/last_watcher/p50_ms"),
        "etcd_fanout_last_p99_ms": num(e, "/fanout/last_watcher/p99_ms"),
        "etcd_fanout_correct": e["fanout"]["correct"],
        "shared_stream": opts.shared_stream,
        "fanout_shared_p50_ms": num(f, "/shared_stream/delivery/p50_ms"),
        "fanout_shared_p99_ms": num(f, "/shared_stream/delivery/p99_ms"),
        "fanout_shared_last_p99_ms": num(f, "/shared_stream/last_watcher/p99_ms"),
        "fanout_shared_correct": f["shared_stream"]["correct"],
        "etcd_shared_fanout_p50_ms": num(e, "/fanout_shared_stream/delivery/p50_ms"),
        "etcd_shared_fanout_p99_ms": num(e, "/fanout_shared_stream/delivery/p99_ms"),
        "etcd_shared_fanout_correct": e["fanout_shared_stream"]["correct"],
        "etcd_shared_fanout_last_p99_ms": num(e, "/fanout_shared_stream/last_watcher/p99_ms"),
        "converge_ms": num(&r["converge"], "/converge_ms"),
        "converge_last_ack_ms": num(&r["converge"], "/last_ack_ms"),
        "converge_correct": r["converge"]["correct"],
        "storm_watchers": st["watchers"],
        "storm_resume_ms": num(kill, "/caught_up_ms"),
        "storm_reconnected_ms": num(kill, "/reconnected_ms"),
        "storm_down_ms": num(kill, "/down_ms"),
        "storm_graceful_resume_ms": num(term, "/caught_up_ms"),
        "storm_graceful_reconnected_ms": num(term, "/reconnected_ms"),
        "storm_correct": st["correct"],
        "storm_reconnect_attempts": st["reconnect_attempts"],
        "storm_max_reconnects": st["max_reconnects_per_watcher"],
        "storm_writes_acked": st["writes"]["acked_during_storm"],
        "storm_write_outage_ms": num(st, "/writes/longest_gap_ms"),
        "resolve_qps": num(&r["resolve"], "/resolve_qps"),
        "empty_rpc_qps": num(&r["resolve"], "/empty_rpc_qps"),
        "resolve_ratio": num(&r["resolve"], "/ratio"),
        "etcd_range_qps": num(e, "/range/range_qps"),
        "write_p50_ms": num(w1, "/p50_ms"),
        "write_qps": num(w1, "/qps"),
        "write64_p50_ms": num(w64, "/p50_ms"),
        "write64_qps": num(w64, "/qps"),
        "etcd_put_p50_ms": num(p1, "/p50_ms"),
        "etcd_put_qps": num(p1, "/qps"),
        "etcd_put64_p50_ms": num(p64, "/p50_ms"),
        "etcd_put64_qps": num(p64, "/qps"),
        "rollout_agents": ro["agents"],
        "rollout_report_qps": num(ro1, "/qps"),
        "rollout_report_p50_ms": num(ro1, "/p50_ms"),
        "rollout_report_p99_ms": num(ro1, "/p99_ms"),
        "rollout_report64_qps": num(ro64, "/qps"),
        "rollout_report64_p50_ms": num(ro64, "/p50_ms"),
        "rollout_report64_p99_ms": num(ro64, "/p99_ms"),
        "rollout_server_us_per_report": num(ro, "/server_cpu_us_per_report"),
        "rollout_reports_per_core_s": num(ro, "/reports_per_core_s"),
        "rollout_agents_per_core_at_5s": num(ro, "/agents_per_core_at_5s"),
        "rollout_server_us_per_report_saturated": num(ro, "/server_cpu_us_per_report_saturated"),
        "rollout_agents_per_core_at_5s_saturated": num(ro, "/agents_per_core_at_5s_saturated"),
        "rollout_rss_delta_kib": num(ro, "/rss_delta_kib"),
        "rollout_fanout_plain_p99_ms": num(ro, "/fanout_plain/deliveries/p99_ms"),
        "rollout_fanout_active_p99_ms": num(ro, "/fanout_rollout_active/deliveries/p99_ms"),
        "rollout_fanout_ratio_p99": num(ro, "/fanout_ratio_p99"),
        "rollout_step_newly_assigned": ro["step"]["newly_assigned"],
        "rollout_step_all_acknowledged_ms": num(ro, "/step/all_acknowledged_ms"),
        "rollout_abort_canary_agents": ro["breach"]["canary_agents"],
        "rollout_abort_all_back_ms": num(ro, "/breach/all_back_ms"),
        "rollout_correct": ro["correct"],
        "bytes_per_watch": f["bytes_per_watch"],
        "etcd_bytes_per_watch": e["fanout"]["bytes_per_watch"],
        "etcd_shared_bytes_per_watch": e["fanout_shared_stream"]["bytes_per_watch"],
        "shared_bytes_per_watch": f["shared_stream"]["bytes_per_watch"],
        "memory_versions": r["memory"]["versions"],
        "memory_default_rss_mib": num(&r["memory"], "/runs/0/read_rss_mib"),
        "memory_default_hwm_mib": num(&r["memory"], "/runs/0/hwm_mib"),
        "memory_small_rss_mib": num(&r["memory"], "/runs/1/read_rss_mib"),
        "memory_small_hwm_mib": num(&r["memory"], "/runs/1/hwm_mib"),
        "harness_cpu_s": crate::procfs::round3(harness_cpu_s),
        "scenarios": r,
    });
    if let (Some(s), Value::Object(info)) = (s.as_object_mut(), run_info(opts)) {
        s.extend(info);
    }
    s
}

/// When, where and what was measured: date, machine, server binary, commit,
/// authentication, `--quick`, the harness's command line. The summary holds
/// these at its top level; a single scenario's JSON under `run`.
pub fn run_info(opts: &Options) -> Value {
    let args: Vec<String> = std::env::args().skip(1).collect();
    json!({
        "command": format!("promptreg-bench {}", args.join(" ")),
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "machine": machine(),
        "server_bin": opts.server_bin.display().to_string(),
        "commit": commit(),
        // Every promptreg call carries the admin token; the server checks it.
        "authentication": "on (bearer token on every call)",
        "quick": opts.quick,
    })
}

/// The checked-out commit, with `-dirty` when src/ or proto/ differ from it.
fn commit() -> Value {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--", "src", "proto", "Cargo.toml"])
                .is_some_and(|s| !s.is_empty());
            json!(if dirty { format!("{head}-dirty") } else { head })
        }
        None => Value::Null,
    }
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "model_name": model,
        "mem_gib": (mem_kb as f64 / 1048576.0).round(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v >= 1000.0 {
        format!("{:.0}", v)
    } else if v >= 100.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "–".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

/// The markdown tables of a summary.
pub fn markdown(s: &Value) -> String {
    let g = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
    let n = s["watchers"].as_u64().unwrap_or(0);
    let c = s["connections"].as_u64().unwrap_or(0);
    let m = s["promotes"].as_u64().unwrap_or(0);
    let mut out = String::new();
    out += &format!(
        "promptreg-bench, {} (promptreg {}, authentication on: a bearer token on every call): {} watchers over {} connections, {} promotes; {} ({} cores, {} GiB){}\n\n",
        s["date"].as_str().unwrap_or(""),
        s["commit"].as_str().unwrap_or("?"),
        n,
        c,
        m,
        s["machine"]["model_name"].as_str().unwrap_or(""),
        s["machine"]["nproc"],
        s["machine"]["mem_gib"],
        if s["quick"] == true { ", --quick" } else { "" },
    );
    out += "| figure | promptreg | etcd 3.4 | promptreg / etcd | target | met |\n";
    out += "| --- | ---: | ---: | ---: | --- | --- |\n";
    let ok = |k: &str| s[k] == true;
    let shapes = [
        ("", "one stream per watcher (Watch)".to_string()),
        (
            "_shared",
            format!(
                "{} watchers per stream (WatchMany; etcd watch ids)",
                s["shared_stream"]
            ),
        ),
    ];
    for (key, shape) in shapes {
        let (f50, e50) = (
            g(&format!("fanout{key}_p50_ms")),
            g(&format!("etcd{key}_fanout_p50_ms")),
        );
        if f50.is_nan() && e50.is_nan() {
            continue;
        }
        out += &format!("| **{shape}** | | | | | |\n");
        out += &format!(
            "| promote → each watcher, p50 (ms) | {} | {} | {} | | |\n",
            fmt(f50),
            fmt(e50),
            ratio(f50, e50)
        );
        let (f99, e99) = (
            g(&format!("fanout{key}_p99_ms")),
            g(&format!("etcd{key}_fanout_p99_ms")),
        );
        out += &format!(
            "| promote → each watcher, p99 (ms) | {} | {} | {} | < 100 and ≤ 0.5× etcd | {} |\n",
            fmt(f99),
            fmt(e99),
            ratio(f99, e99),
            yes(f99 < 100.0 && f99 <= 0.5 * e99)
        );
        let (fl, el) = (
            g(&format!("fanout{key}_last_p99_ms")),
            g(&format!("etcd{key}_fanout_last_p99_ms")),
        );
        out += &format!(
            "| promote → last of {n} watchers, p99 over promotes (ms) | {} | {} | {} | < 100 and ≤ 0.5× etcd | {} |\n",
            fmt(fl),
            fmt(el),
            ratio(fl, el),
            yes(fl < 100.0 && fl <= 0.5 * el)
        );
        out += &format!(
            "| every watcher saw every promote once, in order | {} | {} | | required | {} |\n",
            yes(ok(&format!("fanout{key}_correct"))),
            yes(ok(&format!("etcd{key}_fanout_correct"))),
            yes(ok(&format!("fanout{key}_correct")))
        );
    }
    out += "| **other figures** | | | | | |\n";
    let conv = g("converge_ms");
    out += &format!(
        "| rollback → {n} agents acknowledged, FleetStatus in sync (ms) | {} | | | < 1000 | {} |\n",
        fmt(conv),
        yes(conv < 1000.0 && ok("converge_correct"))
    );
    out += &format!(
        "| (rollback → last AckApplied answered) (ms) | {} | | | | |\n",
        fmt(g("converge_last_ack_ms"))
    );
    let sw = s["storm_watchers"].as_u64().unwrap_or(0);
    for (stop, resume, reconnected) in [
        ("SIGKILL", "storm_resume_ms", "storm_reconnected_ms"),
        (
            "graceful (SIGTERM)",
            "storm_graceful_resume_ms",
            "storm_graceful_reconnected_ms",
        ),
    ] {
        out += &format!(
            "| storm: {stop} restart → all {sw} watchers reconnected / caught up (ms) | {} / {} | | | | |\n",
            fmt(g(reconnected)),
            fmt(g(resume))
        );
    }
    out += &format!(
        "| storm: every watcher saw every committed promote once, in order, across both restarts | {} | | | required | {} |\n",
        yes(ok("storm_correct")),
        yes(ok("storm_correct"))
    );
    out += &format!(
        "| storm: reconnect attempts, all watchers / most by one watcher | {} / {} | | | | |\n",
        s["storm_reconnect_attempts"], s["storm_max_reconnects"]
    );
    out += &format!(
        "| storm: promotes acknowledged during the storm / longest wait between two (ms) | {} / {} | | | | |\n",
        s["storm_writes_acked"],
        fmt(g("storm_write_outage_ms"))
    );
    let (rq, eq, rr) = (g("resolve_qps"), g("empty_rpc_qps"), g("etcd_range_qps"));
    out += &format!(
        "| resolve (GetVersion by label), peak req/s | {} | {} (Range) | {} | ≥ 0.8× empty RPC | {} |\n",
        fmt(rq),
        fmt(rr),
        ratio(rq, rr),
        yes(rq >= 0.8 * eq)
    );
    out += &format!(
        "| empty unary RPC (Health/Check), peak req/s | {} | | | | |\n| resolve / empty RPC | {:.2} | | | ≥ 0.80 | |\n",
        fmt(eq),
        g("resolve_ratio")
    );
    let (w1, p1) = (g("write_p50_ms"), g("etcd_put_p50_ms"));
    out += &format!(
        "| durable promote, 1 writer, p50 (ms) | {} | {} (Put) | {} | | |\n",
        fmt(w1),
        fmt(p1),
        ratio(w1, p1)
    );
    out += &format!(
        "| durable promote, 1 writer, req/s | {} | {} | {} | | |\n",
        fmt(g("write_qps")),
        fmt(g("etcd_put_qps")),
        ratio(g("write_qps"), g("etcd_put_qps"))
    );
    out += &format!(
        "| durable promote, 64 writers, p50 (ms) / req/s | {} / {} | {} / {} | | | |\n",
        fmt(g("write64_p50_ms")),
        fmt(g("write64_qps")),
        fmt(g("etcd_put64_p50_ms")),
        fmt(g("etcd_put64_qps"))
    );
    let ra = s["rollout_agents"].as_u64().unwrap_or(0);
    out += &format!(
        "| rollout: ReportOutcome from {ra} agents, concurrency 1 / 64, req/s | {} / {} | | | | |\n",
        fmt(g("rollout_report_qps")),
        fmt(g("rollout_report64_qps"))
    );
    out += &format!(
        "| rollout: server CPU per report, each alone / saturated (µs) | {} / {} | | | | |\n",
        fmt(g("rollout_server_us_per_report")),
        fmt(g("rollout_server_us_per_report_saturated"))
    );
    out += &format!(
        "| rollout: agents one core serves at one report every 5 s, each alone / saturated | {} / {} | | | | |\n",
        fmt(g("rollout_agents_per_core_at_5s")),
        fmt(g("rollout_agents_per_core_at_5s_saturated"))
    );
    out += &format!(
        "| rollout: GetRollout counts per arm equal the requests reported | {} | | | required | {} |\n",
        yes(ok("rollout_correct")),
        yes(ok("rollout_correct"))
    );
    let (bw, ebw) = (g("bytes_per_watch"), g("etcd_bytes_per_watch"));
    out += &format!(
        "| memory per idle watch stream (bytes) | {} | {} | {} | < 10,000 | {} |\n",
        fmt(bw),
        fmt(ebw),
        ratio(bw, ebw),
        yes(bw < 10_000.0)
    );
    let (sbw, ebs) = (
        g("shared_bytes_per_watch"),
        g("etcd_shared_bytes_per_watch"),
    );
    if !(sbw.is_nan() && ebs.is_nan()) {
        out += &format!(
            "| memory per idle watch, {} per stream (bytes) | {} | {} | {} | | |\n",
            s["shared_stream"],
            fmt(sbw),
            fmt(ebs),
            ratio(sbw, ebs)
        );
    }

    // Resolve cells.
    out += "\n| concurrency | resolve req/s | p50 / p99 (ms) | empty RPC req/s | p50 / p99 (ms) | ratio | etcd Range req/s | p50 / p99 (ms) |\n";
    out += "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    let sc = &s["scenarios"];
    if let Some(cells) = sc["resolve"]["cells"].as_array() {
        for cl in cells {
            let conc = cl["concurrency"].as_u64().unwrap_or(0);
            let er = cell(&sc["etcd"]["range"]["cells"], "concurrency", conc);
            let lat =
                |v: &Value| format!("{} / {}", fmt(num(v, "/p50_ms")), fmt(num(v, "/p99_ms")));
            out += &format!(
                "| {conc} | {} | {} | {} | {} | {:.2} | {} | {} |\n",
                fmt(num(cl, "/resolve/qps")),
                lat(&cl["resolve"]),
                fmt(num(cl, "/empty_rpc/qps")),
                lat(&cl["empty_rpc"]),
                num(cl, "/ratio"),
                fmt(num(er, "/qps")),
                lat(er)
            );
        }
    }

    out += &rollout_table(&sc["rollout"]);
    out += &cost_table(&sc["cost"]);

    // Resident memory as the data grows.
    if let Some(runs) = sc["memory"]["runs"].as_array() {
        out += &format!(
            "\n| caches ({} versions of {} KiB published, then read) | started (MiB) | published (MiB) | read (MiB) | read again (MiB) | VmHWM (MiB) |\n",
            sc["memory"]["versions"],
            sc["memory"]["version_bytes"].as_u64().unwrap_or(0) / 1024
        );
        out += "| --- | ---: | ---: | ---: | ---: | ---: |\n";
        for run in runs {
            let flags = run["flags"].as_str().unwrap_or("");
            out += &format!(
                "| {}{} | {} | {} | {} | {} | {} |\n",
                run["caches"].as_str().unwrap_or("?"),
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(" (`{flags}`)")
                },
                fmt(num(run, "/started_rss_mib")),
                fmt(num(run, "/published_rss_mib")),
                fmt(num(run, "/read_rss_mib")),
                fmt(num(run, "/read_again_rss_mib")),
                fmt(num(run, "/hwm_mib")),
            );
        }
    }

    // Who used the CPU.
    out += "\n| scenario (measured part) | wall (s) | harness CPU (cores) | server CPU (cores) | other processes (cores) |\n";
    out += "| --- | ---: | ---: | ---: | ---: |\n";
    let mut cpu_row = |label: String, v: &Value| {
        if v.is_object() {
            out += &format!(
                "| {label} | {} | {:.2} | {:.2} | {:.2} |\n",
                fmt(num(v, "/wall_s")),
                num(v, "/harness_cores"),
                num(v, "/server_cores"),
                num(v, "/other_cores")
            );
        }
    };
    cpu_row(
        format!("fanout: open {n} watchers"),
        &sc["fanout"]["open_cpu"],
    );
    cpu_row(format!("fanout: {m} promotes"), &sc["fanout"]["cpu"]);
    cpu_row(
        "fanout, shared streams: open watchers".into(),
        &sc["fanout"]["shared_stream"]["open_cpu"],
    );
    cpu_row(
        format!("fanout, shared streams: {m} promotes"),
        &sc["fanout"]["shared_stream"]["cpu"],
    );
    cpu_row(
        "converge: rollback until in sync".into(),
        &sc["converge"]["cpu"],
    );
    for r in sc["storm"]["restarts"].as_array().into_iter().flatten() {
        cpu_row(
            format!(
                "storm: {} restart until every watcher caught up",
                r["stop"].as_str().unwrap_or("?")
            ),
            &r["cpu"],
        );
    }
    cpu_row(
        "storm: writes, both restarts, final catch-up".into(),
        &sc["storm"]["cpu"],
    );
    for cl in sc["resolve"]["cells"].as_array().into_iter().flatten() {
        let conc = &cl["concurrency"];
        cpu_row(format!("resolve, concurrency {conc}"), &cl["resolve_cpu"]);
        cpu_row(
            format!("empty RPC, concurrency {conc}"),
            &cl["empty_rpc_cpu"],
        );
    }
    for cl in sc["write"]["cells"].as_array().into_iter().flatten() {
        cpu_row(format!("write, {} writers", cl["writers"]), &cl["cpu"]);
    }
    cpu_row(
        "rollout: at rest, agents connected".into(),
        &sc["rollout"]["idle_cpu"],
    );
    for cl in sc["rollout"]["cells"].as_array().into_iter().flatten() {
        cpu_row(
            format!("rollout: ReportOutcome, concurrency {}", cl["concurrency"]),
            &cl["cpu"],
        );
    }
    cpu_row(
        format!("etcd fanout: {m} puts"),
        &sc["etcd"]["fanout"]["cpu"],
    );
    cpu_row(
        "etcd fanout, shared streams: puts".into(),
        &sc["etcd"]["fanout_shared_stream"]["cpu"],
    );
    for cl in sc["etcd"]["range"]["cells"]
        .as_array()
        .into_iter()
        .flatten()
    {
        cpu_row(
            format!("etcd Range, concurrency {}", cl["concurrency"]),
            &cl["cpu"],
        );
    }
    for cl in sc["etcd"]["put"]["cells"].as_array().into_iter().flatten() {
        cpu_row(format!("etcd Put, {} writers", cl["writers"]), &cl["cpu"]);
    }
    out += &format!(
        "\nHarness CPU over the whole run: {:.1} s. Harness and servers share the same {} cores.\n",
        g("harness_cpu_s"),
        s["machine"]["nproc"]
    );
    out
}

/// The `rollout` scenario's cells as a markdown table (empty without them):
/// per concurrency the reports/s, latency and the CPU per report, then the
/// server's memory and the per-arm check. Also what `rollout` alone prints
/// with `--markdown`.
pub fn rollout_table(r: &Value) -> String {
    let Some(cells) = r["cells"].as_array() else {
        return String::new();
    };
    let mut out = format!(
        "\n| ReportOutcome ({} agents, {} requests per report) | reports/s | p50 / p99 (ms) | server CPU per report (µs; less at-rest) | harness CPU per report (µs) | server / harness / other (cores) |\n",
        r["agents"], r["requests_per_report"]
    );
    out += "| ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for cl in cells {
        let cpu = &cl["cpu"];
        out += &format!(
            "| concurrency {} | {} | {} / {} | {} ({}) | {} | {:.2} / {:.2} / {:.2} |\n",
            cl["concurrency"],
            fmt(num(cl, "/qps")),
            fmt(num(cl, "/p50_ms")),
            fmt(num(cl, "/p99_ms")),
            fmt(num(cpu, "/server_us_per_report")),
            fmt(num(cpu, "/server_net_us_per_report")),
            fmt(num(cpu, "/harness_us_per_report")),
            num(cpu, "/server_cores"),
            num(cpu, "/harness_cores"),
            num(cpu, "/other_cores"),
        );
    }
    out += &format!(
        "\nServer at rest (agents connected, rollout running): {:.3} cores. Server RSS {} MiB before the reports, {} MiB after ({:+.0} KiB).\n\n\
         Server CPU per report, less at rest: {} µs when each report arrives alone (concurrency 1), so one core serves {} reports/s, \
         {} agents at one report every {} s; {} µs when the server is saturated (concurrency 64): {} reports/s, {} agents.\n",
        num(r, "/idle_cpu/server_cores"),
        fmt(num(r, "/rss_before_mib")),
        fmt(num(r, "/rss_after_mib")),
        num(r, "/rss_delta_kib"),
        fmt(num(r, "/server_cpu_us_per_report")),
        fmt(num(r, "/reports_per_core_s")),
        fmt(num(r, "/agents_per_core_at_5s")),
        r["report_interval_s"],
        fmt(num(r, "/server_cpu_us_per_report_saturated")),
        fmt(num(r, "/reports_per_core_s_saturated")),
        fmt(num(r, "/agents_per_core_at_5s_saturated")),
    );
    out += &rollout_moves_table(r);
    if let Some(arms) = r["arms"].as_array() {
        out += "\n| arm | agents assigned / acknowledged | requests reported | requests counted (GetRollout) | errors reported / counted |\n";
        out += "| --- | ---: | ---: | ---: | ---: |\n";
        for a in arms {
            out += &format!(
                "| {} | {} / {} | {} | {} | {} / {} |\n",
                a["arm"].as_str().unwrap_or("?"),
                a["agents_assigned"],
                a["agents_acknowledged"],
                a["requests_reported"],
                a["requests_counted"],
                a["errors_reported"],
                a["errors_counted"],
            );
        }
    }
    out
}

/// The rollout's timed moves: fan-out with and without it, the step and
/// the guardrail's abort.
fn rollout_moves_table(r: &Value) -> String {
    let fan = |key: &str| {
        format!(
            "{} / {} / {}",
            fmt(num(r, &format!("/{key}/deliveries/p50_ms"))),
            fmt(num(r, &format!("/{key}/deliveries/p99_ms"))),
            fmt(num(r, &format!("/{key}/last_agent/max_ms"))),
        )
    };
    let mut out = format!(
        "\n| {} agents, guardrail every {} | agents | p50 / p99 / max (ms) |\n| --- | ---: | ---: |\n",
        r["agents"],
        r["eval_interval"].as_str().unwrap_or("?")
    );
    out += &format!(
        "| promote fan-out of another prompt, no rollout ({} promotes, half before the rollout and half after it; per delivery, max is the slowest promote's last agent) | {} | {} |\n",
        r["fanout_plain"]["promotes"],
        r["agents"],
        fan("fanout_plain")
    );
    out += &format!(
        "| the same, rollout running at {}% (p99 ratio {}) | {} | {} |\n",
        num(r, "/steps_bp/0") / 100.0,
        fmt(num(r, "/fanout_ratio_p99")),
        r["agents"],
        fan("fanout_rollout_active")
    );
    out += &format!(
        "| StartRollout until the {}% cohort acknowledged | {} | - / - / {} |\n",
        num(r, "/steps_bp/0") / 100.0,
        r["step"]["agents_before"],
        fmt(num(r, "/start_to_exposed_ms"))
    );
    out += &format!(
        "| step {}% -> {}% until every newly assigned agent acknowledged | {} | {} / {} / {} |\n",
        num(r, "/step/from_bp") / 100.0,
        num(r, "/step/to_bp") / 100.0,
        r["step"]["newly_assigned"],
        fmt(num(r, "/step/acks_after_send/p50_ms")),
        fmt(num(r, "/step/acks_after_send/p99_ms")),
        fmt(num(r, "/step/all_acknowledged_ms"))
    );
    out += &format!(
        "| guardrail abort: decision until every canary agent is back on stable and acknowledged | {} | {} / {} / {} |\n",
        r["breach"]["canary_agents"],
        fmt(num(r, "/breach/acks_after_decision/p50_ms")),
        fmt(num(r, "/breach/acks_after_decision/p99_ms")),
        fmt(num(r, "/breach/all_back_ms"))
    );
    out += &format!(
        "\nThe breach: {}; the decision came {} ms after the last bad report was answered (0: while reports were still arriving; the guardrail looks every interval).\n",
        r["breach"]["rule"].as_str().unwrap_or("?"),
        fmt(num(r, "/breach/last_report_to_decision_ms"))
    );
    out
}

/// The unit costs of the `cost` scenario.
pub fn cost_table(r: &Value) -> String {
    if r.is_null() {
        return String::new();
    }
    let mut out = format!(
        "\n| unit cost ({} agents over {} connections) | server CPU | memory | loopback bytes |\n| --- | ---: | ---: | ---: |\n",
        r["agents"], r["connections"]
    );
    out += &format!(
        "| a connected idle agent | {} µs per second | {} bytes | {} per hour |\n",
        fmt(num(r, "/idle/server_cpu_us_per_agent_s")),
        r["rss_bytes_per_agent"],
        fmt(num(r, "/idle/lo_bytes_per_agent_hour")),
    );
    out += &format!(
        "| a promote, delivered to and acknowledged by every agent | {} ms ({} µs per agent) | | {} per agent |\n",
        fmt(num(r, "/promote/server_cpu_ms_per_promote")),
        fmt(num(r, "/promote/server_cpu_us_per_agent_promote")),
        fmt(num(r, "/promote/lo_bytes_per_agent_promote")),
    );
    out += &format!(
        "| a resolve (GetVersion by label, concurrency 64) | {} µs | | {} |\n",
        fmt(num(r, "/resolve/server_cpu_us_per_resolve")),
        fmt(num(r, "/resolve/lo_bytes_per_resolve")),
    );
    out += &format!(
        "\nStorage: {} bytes on disk per published version ({} versions of the ~1 KB template), {} bytes per label move ({} moves); the data directory held {} bytes empty and {} bytes after both.\n",
        r["storage"]["bytes_per_version"],
        r["storage"]["versions"],
        r["storage"]["bytes_per_revision"],
        r["storage"]["moves"],
        r["storage"]["empty_bytes"],
        r["storage"]["after_moves_bytes"],
    );
    out
}
