use super::*;
use proptest::prelude::*;

/// The vectors of the proto's ASSIGNMENT paragraph.
const VECTORS: [(&str, &str, u32); 7] = [
    ("s1", "agent-0", 5760),
    ("s1", "agent-1", 9993),
    ("s1", "agent-2", 7040),
    ("s1", "", 503),
    ("", "agent-0", 2498),
    ("rollout-7", "tenant-acme", 9644),
    ("é", "ключ", 4371),
];

#[test]
fn buckets_match_the_documented_vectors() {
    for (salt, key, expected) in VECTORS {
        assert_eq!(bucket(salt, key), expected, "salt {salt:?} key {key:?}");
    }
}

#[test]
fn the_proto_lists_the_same_vectors() {
    let proto = include_str!("../../../proto/promptreg/v1/registry.proto");
    for (salt, key, expected) in VECTORS {
        let line = format!("{salt:?}, {key:?}");
        let found = proto
            .lines()
            .find(|l| l.replace(' ', "").contains(&line.replace(' ', "")))
            .unwrap_or_else(|| panic!("the proto has no vector for {line}"));
        assert!(found.ends_with(&format!("→ {expected}")), "{found}");
    }
}

#[test]
fn ten_thousand_agents_split_within_binomial_tolerance() {
    for weight in [100u32, 1000, 5000] {
        let on = (0..10_000)
            .filter(|i| bucket("split-test", &format!("agent-{i}")) < weight)
            .count() as f64;
        let p = weight as f64 / 10_000.0;
        let sd = (10_000.0 * p * (1.0 - p)).sqrt();
        // Four standard deviations: a false failure about once in 16,000.
        assert!(
            (on - 10_000.0 * p).abs() < 4.0 * sd,
            "{weight} bp: {on} agents"
        );
    }
}

fn sample_rollout() -> Rollout {
    let digest =
        crate::domain::ContentDigest::parse("d", &format!("sha256:{}", "ab".repeat(32))).unwrap();
    Rollout {
        id: 1,
        name: PromptName::parse("name", "p", 128).unwrap(),
        label: LabelName::parse("label", "production").unwrap(),
        stable: Side { version: 1, digest },
        candidate: Side { version: 2, digest },
        state: RolloutState::Running,
        step: 0,
        weight_bp: 1000,
        previous_weight_bp: 0,
        spec: RolloutSpec {
            steps_bp: vec![1000, 5000, 10_000],
            bake_secs: 60,
            guardrails: vec![Guardrail {
                metric: Metric::ErrorRate,
                max: 0.05,
            }],
            max_error_rate_increase: Some(0.02),
            min_samples: 200,
            max_extensions: 2,
            pause_when_inconclusive: false,
            salt: "s".into(),
            sticky_by: None,
        },
        extensions: 0,
        step_started: 0,
        started_by: "alice".into(),
        started_at: 0,
        request_id: None,
    }
}

proptest! {
    #[test]
    fn raising_the_weight_only_adds_agents(key in ".{0,40}", salt in "[a-z0-9]{0,16}", low in 0u32..=10_000, high in 0u32..=10_000) {
        let (low, high) = (low.min(high), low.max(high));
        let r = Rollout { spec: RolloutSpec { salt, ..sample_rollout().spec }, ..sample_rollout() };
        let bucket = r.bucket(&key);
        let b = Some(bucket);
        if r.arm_at(low, b, false) == Arm::Candidate {
            prop_assert_eq!(r.arm_at(high, b, false), Arm::Candidate);
        }
        prop_assert!(bucket < 10_000);
    }
}

fn counts(requests: u64, errors: u64) -> Counts {
    Counts {
        requests,
        errors,
        ..Counts::default()
    }
}

const MINUTE: i64 = 60_000_000;

#[test]
fn a_healthy_step_advances_only_after_its_bake() {
    let r = sample_rollout();
    let evidence = Evidence {
        stable: counts(5000, 50),
        candidate: counts(1000, 9),
        candidate_agents: 10,
        candidate_acked: 10,
        stable_agents: 90,
        exposed_at: Some(MINUTE),
    };
    assert_eq!(evaluate(&r, &evidence, MINUTE + MINUTE / 2), Verdict::Hold);
    assert!(matches!(
        evaluate(&r, &evidence, 2 * MINUTE),
        Verdict::Advance { .. }
    ));
}

#[test]
fn a_breach_aborts_at_once_on_enough_samples() {
    let r = sample_rollout();
    let mut evidence = Evidence {
        candidate: counts(199, 100),
        ..Evidence::default()
    };
    assert_eq!(
        evaluate(&r, &evidence, 1),
        Verdict::Hold,
        "too few to abort"
    );
    evidence.candidate = counts(200, 100);
    let Verdict::Abort { reason } = evaluate(&r, &evidence, 1) else {
        panic!("no abort")
    };
    assert!(
        reason.contains("error_rate<=0.05") && reason.contains("0.5000"),
        "{reason}"
    );
}

#[test]
fn missing_evidence_is_inconclusive_then_aborts_or_pauses() {
    let mut r = sample_rollout();
    let no_exposure = Evidence {
        stable: counts(5000, 50),
        candidate: counts(1000, 9),
        ..Evidence::default()
    };
    let Verdict::Extend { reason } = evaluate(&r, &no_exposure, MINUTE) else {
        panic!("not extended")
    };
    assert!(
        reason.contains("not acknowledged") && reason.contains("extension 1 of 2"),
        "{reason}"
    );
    r.extensions = 1;
    assert_eq!(
        evaluate(&r, &no_exposure, MINUTE + 30_000_000),
        Verdict::Hold
    );
    r.extensions = 2;
    assert!(matches!(
        evaluate(&r, &no_exposure, 3 * MINUTE),
        Verdict::Abort { .. }
    ));
    r.spec.pause_when_inconclusive = true;
    assert!(matches!(
        evaluate(&r, &no_exposure, 3 * MINUTE),
        Verdict::Pause { .. }
    ));
    // Thin data and a NaN are inconclusive too, never a pass.
    r.extensions = 0;
    let thin = Evidence {
        stable: counts(100, 0),
        candidate: counts(1000, 0),
        exposed_at: Some(0),
        stable_agents: 5,
        ..Evidence::default()
    };
    assert!(matches!(
        evaluate(&r, &thin, MINUTE),
        Verdict::Extend { .. }
    ));
    r.spec.guardrails = vec![Guardrail {
        metric: Metric::LatencyP95Ms,
        max: 100.0,
    }];
    let no_latency = Evidence {
        stable: counts(1000, 0),
        ..thin
    };
    let Verdict::Extend { reason } = evaluate(&r, &no_latency, MINUTE) else {
        panic!()
    };
    assert!(reason.contains("latency_p95_ms"), "{reason}");
}

#[test]
fn the_comparative_test_fails_passes_or_waits() {
    let r = sample_rollout();
    let at = |stable: Counts, candidate: Counts| {
        evaluate(
            &r,
            &Evidence {
                stable,
                candidate,
                candidate_agents: 1,
                candidate_acked: 1,
                stable_agents: 1,
                exposed_at: Some(0),
            },
            MINUTE,
        )
    };
    // 4.5% against 1%: clearly worse than the 2-point margin.
    assert!(matches!(
        at(counts(20_000, 200), counts(20_000, 900)),
        Verdict::Abort { .. }
    ));
    // The same rates: clearly within it.
    assert!(matches!(
        at(counts(20_000, 200), counts(20_000, 200)),
        Verdict::Advance { .. }
    ));
    // 3% against 1% on little data: the interval straddles 2 points.
    assert!(matches!(
        at(counts(300, 3), counts(300, 9)),
        Verdict::Extend { .. }
    ));
}

#[test]
fn paused_and_ended_rollouts_hold() {
    let mut r = sample_rollout();
    r.state = RolloutState::Paused;
    let bad = Evidence {
        candidate: counts(1000, 1000),
        ..Evidence::default()
    };
    assert_eq!(evaluate(&r, &bad, i64::MAX), Verdict::Hold);
}

#[test]
fn arms_follow_the_exposure_and_the_state() {
    let mut r = sample_rollout();
    let low = Some(10);
    assert_eq!(r.arm(low), Arm::Candidate);
    assert_eq!(r.arm(Some(5000)), Arm::Stable);
    assert_eq!(r.arm(None), Arm::Stable, "no key: stable");
    r.state = RolloutState::Aborted;
    assert_eq!(r.arm(low), Arm::Stable);
    r.state = RolloutState::Completed;
    assert_eq!(r.arm(None), Arm::Candidate);
}

#[test]
fn specs_are_checked_field_by_field() {
    let spec = sample_rollout().spec;
    let bad = |spec: RolloutSpec| spec.validate(|| "r".into()).unwrap_err().field;
    assert_eq!(
        bad(RolloutSpec {
            steps_bp: vec![],
            ..spec.clone()
        }),
        "spec.steps_bp"
    );
    assert_eq!(
        bad(RolloutSpec {
            steps_bp: vec![500, 500, 10_000],
            ..spec.clone()
        }),
        "spec.steps_bp[1]"
    );
    assert_eq!(
        bad(RolloutSpec {
            steps_bp: vec![500, 5000],
            ..spec.clone()
        }),
        "spec.steps_bp"
    );
    assert_eq!(
        bad(RolloutSpec {
            bake_secs: 0,
            ..spec.clone()
        }),
        "spec.bake_seconds"
    );
    assert_eq!(
        bad(RolloutSpec {
            max_extensions: 21,
            ..spec.clone()
        }),
        "spec.max_extensions"
    );
    assert_eq!(
        bad(RolloutSpec {
            max_error_rate_increase: Some(f64::NAN),
            ..spec.clone()
        }),
        "spec.max_error_rate_increase"
    );
    assert_eq!(
        bad(RolloutSpec {
            salt: "a b".into(),
            ..spec.clone()
        }),
        "spec.salt"
    );
    assert_eq!(
        bad(RolloutSpec {
            sticky_by: Some(String::new()),
            ..spec.clone()
        }),
        "spec.sticky_by"
    );
    assert_eq!(
        bad(RolloutSpec {
            guardrails: vec![Guardrail {
                metric: Metric::ErrorRate,
                max: 2.0
            }],
            ..spec.clone()
        }),
        "spec.guardrails[0]"
    );
    let filled = RolloutSpec {
        salt: String::new(),
        min_samples: 0,
        ..spec
    }
    .validate(|| "random".into())
    .unwrap();
    assert_eq!(
        (filled.salt.as_str(), filled.min_samples),
        ("random", DEFAULT_MIN_SAMPLES)
    );
}

#[test]
fn steps_and_guardrails_parse_as_the_cli_takes_them() {
    assert_eq!(
        parse_steps("s", "1%,5%,25%,100%").unwrap(),
        vec![100, 500, 2500, 10_000]
    );
    assert_eq!(parse_steps("s", "0.5%, 100%").unwrap(), vec![50, 10_000]);
    assert_eq!(parse_steps("s", "100,10000").unwrap(), vec![100, 10_000]);
    assert!(parse_steps("s", "0.001%").is_err());
    assert!(parse_steps("s", "ten").is_err());
    let g = Guardrail::parse("g", "error_rate<=0.02").unwrap();
    assert_eq!((g.metric, g.max), (Metric::ErrorRate, 0.02));
    assert_eq!(
        Guardrail::parse("g", "latency_p95_ms <= 800").unwrap().max,
        800.0
    );
    assert!(Guardrail::parse("g", "errors<0.1").is_err());
    assert!(Guardrail::parse("g", "error_rate<=1.5").is_err());
}
