//! The clap definitions of the progressive-rollout commands (`rollout
//! start|status|pause|resume|abort|advance|promote`, `report`) and the
//! parsers of their values (`--steps`, `--bake`, `--guardrail`); the rest
//! are in `args.rs` and `release_args.rs`.
//!
//! The parsers check syntax and the shape of the steps only, so that a typo
//! fails before anything is sent; every other rule of a rollout is the
//! server's, and its refusal is printed as it gives it.

use super::ClientOptions;
use crate::domain::rollout::{self, percent, Guardrail, FULL_BP, MAX_STEPS};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub action: RolloutAction,
}

#[derive(Debug, Subcommand)]
pub enum RolloutAction {
    /// Start a rollout of a label from its current version (the stable
    /// one) to a candidate, through weighted steps (deployer). On a
    /// protected label this makes a promotion request instead; its
    /// approval starts the rollout.
    Start(RolloutStartArgs),
    /// Where the label's newest rollout stands: state, step, weight, each
    /// arm's agents and outcomes, and the decision log.
    Status(RolloutStatusArgs),
    /// Hold the rollout at its weight: no step is decided until resumed.
    Pause(RolloutControlArgs),
    /// Go on after a pause; the current step's bake starts again.
    Resume(RolloutControlArgs),
    /// End the rollout: every agent back on the stable version.
    Abort(RolloutControlArgs),
    /// Go to the next step now, without waiting for its evidence.
    Advance(RolloutControlArgs),
    /// Go to 100% now: the label moves to the candidate and the rollout
    /// completes.
    Promote(RolloutControlArgs),
}

#[derive(Debug, Args)]
pub struct RolloutStartArgs {
    /// The prompt's name.
    pub name: String,
    /// The label to roll out (not `latest`); its current version is the
    /// stable one.
    #[arg(long)]
    pub label: String,
    /// The version to roll out (also `--to`).
    #[arg(long, visible_alias = "to", value_name = "VERSION")]
    pub candidate: u64,
    /// The candidate's share of agents at each step, comma-separated,
    /// increasing, ending at 100%: percentages to 0.01% (`1%,5%,25%,100%`,
    /// `0.5%,100%`) or basis points (`100,500,2500,10000`). `100%` alone
    /// is a blue-green switch with a bake.
    #[arg(long, value_name = "STEPS", value_parser = parse_steps)]
    pub steps: Steps,
    /// How long each step bakes once every candidate agent acknowledged
    /// it, in whole seconds: `30s`, `10m`, `2h`, `1d` (1 s to 30 d).
    #[arg(long, value_name = "DURATION", value_parser = parse_bake)]
    pub bake: u64,
    /// An absolute limit on the candidate, METRIC<=MAX (repeatable, at
    /// most 8): error_rate, safety_rate and policy_rate in 0..1,
    /// latency_p95_ms in ms. A breach on --min-samples requests aborts.
    #[arg(long = "guardrail", value_name = "METRIC<=MAX", value_parser = parse_guardrail)]
    pub guardrails: Vec<Guardrail>,
    /// The comparative test: abort when the candidate's error rate is
    /// worse than the stable one's by more than this (0..1, e.g. 0.01),
    /// advance only when it is shown not to be. Default: no comparison.
    #[arg(long, value_name = "RATE")]
    pub max_error_rate_increase: Option<f64>,
    /// Requests each arm needs before a step advances, and candidate
    /// requests a guardrail breach needs to abort (default 200).
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    pub min_samples: u64,
    /// How many times an inconclusive step (too few samples, no exposure)
    /// is extended by one bake before the rollout aborts (at most 20).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_extensions: u32,
    /// When the extensions are used up, pause instead of aborting.
    #[arg(long)]
    pub pause_when_inconclusive: bool,
    /// The assignment salt (at most 64 printable characters); default a
    /// random one. The same salt puts the same agents first.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub salt: String,
    /// Assign agents by this attribute of theirs (e.g. `tenant`) instead
    /// of their agent id: every agent of a tenant gets the same arm.
    #[arg(long, value_name = "ATTR")]
    pub sticky_by: Option<String>,
    /// Why (required; kept in the label's history).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct RolloutStatusArgs {
    /// The prompt's name.
    pub name: String,
    /// The label.
    #[arg(long)]
    pub label: String,
    /// Print the status again every --interval until the rollout ends
    /// (exit 0 once completed, 1 once aborted).
    #[arg(long)]
    pub watch: bool,
    /// With --watch: how often, e.g. `2s`, `1m`.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_interval)]
    pub interval: std::time::Duration,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct RolloutControlArgs {
    /// The prompt's name.
    pub name: String,
    /// The label whose rollout to act on.
    #[arg(long)]
    pub label: String,
    /// Why (required; kept in the label's history and the decision log).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The prompt's name.
    pub name: String,
    /// The label the agent follows.
    #[arg(long)]
    pub label: String,
    /// The reporting agent's id, as in its watch.
    #[arg(long, value_name = "ID")]
    pub agent_id: String,
    /// The version that served these requests.
    #[arg(long)]
    pub version: u64,
    /// Requests served in the window (counts are per window, not totals).
    #[arg(long, value_name = "N")]
    pub requests: u64,
    /// Of those, the failed ones.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub errors: u64,
    /// Of those, the ones with a safety violation.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub safety_violations: u64,
    /// Of those, the ones with a policy violation.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub policy_violations: u64,
    /// The sum of their latencies, in ms (also `--latency-ms`).
    #[arg(
        long,
        visible_alias = "latency-ms",
        value_name = "MS",
        default_value_t = 0.0
    )]
    pub latency_ms_sum: f64,
    /// Requests per latency bucket, 12 comma-separated counts summing to
    /// --requests, for the bounds 5,10,25,50,100,250,500,1000,2500,5000,
    /// 10000 ms and above.
    #[arg(long, value_name = "COUNTS", value_delimiter = ',')]
    pub latency_buckets: Vec<u64>,
    #[command(flatten)]
    pub client: ClientOptions,
}

/// The weights of `--steps`, in basis points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(pub Vec<u32>);

/// `--steps`: the domain's syntax (percentages or basis points), then
/// the shape of a rollout (increasing, ending at 100%), said in percent.
pub fn parse_steps(raw: &str) -> Result<Steps, String> {
    let parts: Vec<&str> = raw.split(',').map(str::trim).collect();
    let in_percent = parts.iter().filter(|p| p.ends_with('%')).count();
    if in_percent != 0 && in_percent != parts.len() {
        // `1,5,25,100%` would read as 0.01%, 0.05%, 0.25%, 100%.
        return Err("mixes percentages and bare numbers (basis points): \
                    write every step as a percentage, e.g. 1%,5%,25%,100%"
            .to_string());
    }
    for part in &parts {
        let decimals = part
            .strip_suffix('%')
            .and_then(|p| p.split_once('.'))
            .map_or("", |(_, d)| d.trim_end_matches('0'));
        if decimals.len() > 2 {
            return Err(format!(
                "{part} is finer than 0.01% (1 basis point), the finest a step can be"
            ));
        }
    }
    let steps = rollout::parse_steps("--steps", raw).map_err(|e| e.rule)?;
    if steps.len() > MAX_STEPS {
        return Err(format!("{} steps: at most {MAX_STEPS}", steps.len()));
    }
    if steps.first() == Some(&0) {
        return Err("0% is not a step: each puts some agents on the candidate".to_string());
    }
    if let Some(pair) = steps.windows(2).find(|pair| pair[1] <= pair[0]) {
        return Err(format!(
            "{} comes after {}: each step must be above the one before",
            percent(pair[1]),
            percent(pair[0])
        ));
    }
    match steps.last() {
        Some(&FULL_BP) => Ok(Steps(steps)),
        last => Err(format!(
            "the last step is {}, not 100%: a rollout ends with every agent on the candidate",
            last.map_or_else(String::new, |bp| percent(*bp))
        )),
    }
}

/// `--bake`: a duration in whole seconds.
pub fn parse_bake(raw: &str) -> Result<u64, String> {
    let duration = crate::time::parse_duration(raw)?;
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "{raw:?} is not a whole number of seconds; write e.g. 30s, 10m, 2h or 1d"
        ));
    }
    Ok(duration.as_secs())
}

/// `--guardrail METRIC<=MAX`, by the domain's rule.
pub fn parse_guardrail(raw: &str) -> Result<Guardrail, String> {
    Guardrail::parse("--guardrail", raw).map_err(|e| e.rule)
}

/// A polling interval for `rollout status --watch`: 100 ms to 1 h.
fn parse_interval(raw: &str) -> Result<std::time::Duration, String> {
    let every = crate::time::parse_duration(raw)?;
    if every < std::time::Duration::from_millis(100) || every > std::time::Duration::from_secs(3600)
    {
        return Err(format!("{raw:?}: the interval must be 100ms to 1h"));
    }
    Ok(every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_percentages_to_a_basis_point_increasing_to_100() {
        assert_eq!(
            parse_steps("1%,5%,25%,100%"),
            Ok(Steps(vec![100, 500, 2500, 10_000]))
        );
        assert_eq!(parse_steps("0.5%, 100%"), Ok(Steps(vec![50, 10_000])));
        assert_eq!(parse_steps("0.01%,100%"), Ok(Steps(vec![1, 10_000])));
        assert_eq!(parse_steps("100%"), Ok(Steps(vec![10_000])));
        assert_eq!(parse_steps("100,10000"), Ok(Steps(vec![100, 10_000])));
        let refused = |raw: &str, needle: &str| {
            let message = parse_steps(raw).expect_err(raw);
            assert!(message.contains(needle), "{raw}: {message}");
        };
        refused("0.001%,100%", "finer than 0.01%");
        refused("0.015%,100%", "finer than 0.01%");
        refused("5%,1%,100%", "1% comes after 5%");
        refused("5%,5%,100%", "5% comes after 5%");
        refused("1%,50%", "the last step is 50%, not 100%");
        refused("1,5,25,100%", "mixes percentages");
        refused("0%,100%", "0% is not a step");
        refused("ten%,100%", "is not a step");
        refused("150%", "is not a step");
    }

    #[test]
    fn a_bake_is_whole_seconds() {
        assert_eq!(parse_bake("30s"), Ok(30));
        assert_eq!(parse_bake("10m"), Ok(600));
        assert_eq!(parse_bake("2h"), Ok(7200));
        assert_eq!(parse_bake("1d"), Ok(86_400));
        assert!(parse_bake("1500ms").is_err());
        assert!(parse_bake("soon").is_err());
    }

    #[test]
    fn guardrails_name_a_metric_and_a_limit() {
        let g = parse_guardrail("latency_p95_ms<=800").unwrap();
        assert_eq!((g.metric.as_str(), g.max), ("latency_p95_ms", 800.0));
        let message = parse_guardrail("errors<0.1").unwrap_err();
        assert!(message.contains("error_rate, safety_rate"), "{message}");
    }
}
