use super::*;

fn name(raw: &str) -> PromptName {
    PromptName::parse("name", raw, 128).unwrap()
}

fn label(raw: &str) -> LabelName {
    LabelName::parse("label", raw).unwrap()
}

fn policy(prefix: &str, approvals: u32, require: &[&str]) -> Policy {
    Policy {
        prefix: prefix.to_string(),
        label: label("production"),
        approvals,
        require: require.iter().map(|c| c.to_string()).collect(),
        allow_emergency_rollback: true,
        request_ttl_secs: None,
        set_by: "admin".into(),
        set_at: 1,
    }
}

fn result(check: &str, passed: bool, sequence: u64) -> CheckResult {
    CheckResult {
        name: name("support/triage"),
        version: 2,
        digest: ContentDigest([0; 32]),
        check: check.to_string(),
        passed,
        score: None,
        url: String::new(),
        details: String::new(),
        attester: "ci".into(),
        time: sequence as i64,
        sequence,
        signature: VersionSignature {
            key_id: "k".into(),
            bytes: vec![],
        },
        envelope_key: String::new(),
        envelope: String::new(),
    }
}

fn facts(kind: MoveKind, to: Option<u64>, earlier: bool) -> MoveFacts<'static> {
    static PRODUCTION: std::sync::OnceLock<LabelName> = std::sync::OnceLock::new();
    MoveFacts {
        label: PRODUCTION.get_or_init(|| label("production")),
        kind,
        to_version: to,
        earlier_target: earlier,
        approved: false,
    }
}

#[test]
fn check_names_follow_the_rule() {
    for good in ["eval", "safety-suite", "a.b_c", "0"] {
        assert!(check_name("check", good).is_ok(), "{good}");
    }
    for bad in ["", "Eval", "-x", "a b", &"x".repeat(64)] {
        let error = check_name("check", bad).unwrap_err();
        assert_eq!(error.field, "check");
    }
    let twice = required_checks("require", &["eval".into(), "eval".into()]).unwrap_err();
    assert_eq!(twice.field, "require[1]");
    assert!(approvals("approvals", 11).is_err());
    assert!(score("score", Some(f64::NAN)).is_err());
}

#[test]
fn the_longest_prefix_governs() {
    let policies = vec![
        policy("", 1, &[]),
        policy("support/", 2, &[]),
        policy("support/t", 3, &[]),
    ];
    let approvals_for =
        |n: &str, l: &str| governing(&policies, &name(n), &label(l)).map(|p| p.approvals);
    assert_eq!(approvals_for("support/triage", "production"), Some(3));
    assert_eq!(approvals_for("support/refund", "production"), Some(2));
    assert_eq!(approvals_for("billing/x", "production"), Some(1));
    assert_eq!(approvals_for("support/triage", "canary"), None);
}

#[test]
fn the_newest_result_per_check_counts() {
    let results = vec![
        result("eval", false, 1),
        result("eval", true, 5),
        result("safety", false, 3),
    ];
    let unmet = unmet_checks(&["eval".into(), "safety".into(), "bias".into()], &results);
    assert_eq!(unmet, vec!["safety (failed)", "bias (no result)"]);
    let later_fail = vec![result("eval", true, 1), result("eval", false, 2)];
    assert_eq!(
        unmet_checks(&["eval".into()], &later_fail),
        vec!["eval (failed)"]
    );
}

#[test]
fn the_gate_orders_freeze_checks_approvals_and_lets_emergencies_through() {
    let freeze = Freeze {
        prefix: "support/".into(),
        label: label("production"),
        until: 100,
        reason: "holiday".into(),
        set_by: "admin".into(),
        set_at: 1,
    };
    let gated = policy("support/", 2, &["eval"]);
    let passing = vec![result("eval", true, 1)];
    // No policy, no freeze: anything goes.
    assert_eq!(
        gate(facts(MoveKind::Promote, Some(2), false), None, &[], &[]),
        Gate::Allow
    );
    // A freeze refuses a promote, not an emergency rollback.
    let refused = gate(
        facts(MoveKind::Promote, Some(2), false),
        Some(&gated),
        &[&freeze],
        &passing,
    );
    assert!(
        matches!(refused, Gate::Refuse(Refusal::Frozen(_))),
        "{refused:?}"
    );
    assert_eq!(
        gate(
            facts(MoveKind::Rollback, Some(1), true),
            Some(&gated),
            &[&freeze],
            &[]
        ),
        Gate::Emergency
    );
    // A rollback to a version the label never had is a promote in disguise.
    assert!(matches!(
        gate(
            facts(MoveKind::Rollback, Some(3), false),
            Some(&gated),
            &[],
            &[]
        ),
        Gate::Refuse(Refusal::ChecksUnmet { .. })
    ));
    // Checks before approvals; then a request.
    assert_eq!(
        gate(
            facts(MoveKind::Promote, Some(2), false),
            Some(&gated),
            &[],
            &[]
        ),
        Gate::Refuse(Refusal::ChecksUnmet {
            version: 2,
            unmet: vec!["eval (no result)".into()]
        })
    );
    assert_eq!(
        gate(
            facts(MoveKind::Promote, Some(2), false),
            Some(&gated),
            &[],
            &passing
        ),
        Gate::Request { approvals: 2 }
    );
    let mut approved = facts(MoveKind::Promote, Some(2), false);
    approved.approved = true;
    assert_eq!(gate(approved, Some(&gated), &[], &passing), Gate::Allow);
    // A protected label is not removed; a checks-only one is.
    assert!(matches!(
        gate(facts(MoveKind::Remove, None, false), Some(&gated), &[], &[]),
        Gate::Refuse(Refusal::Protected { .. })
    ));
    assert_eq!(
        gate(
            facts(MoveKind::Remove, None, false),
            Some(&policy("", 0, &["eval"])),
            &[],
            &[]
        ),
        Gate::Allow
    );
    // Emergency rollbacks can be switched off.
    let mut strict = gated.clone();
    strict.allow_emergency_rollback = false;
    assert_eq!(
        gate(
            facts(MoveKind::Rollback, Some(1), true),
            Some(&strict),
            &[],
            &passing
        ),
        Gate::Request { approvals: 2 }
    );
}

#[test]
fn four_eyes_refuses_the_requester_the_author_and_a_second_approval() {
    let request = PromotionRequest {
        id: 7,
        name: name("support/triage"),
        label: label("production"),
        version: 2,
        digest: ContentDigest([0; 32]),
        base_version: Some(1),
        kind: MoveKind::Promote,
        requester: "dana".into(),
        reason: "ship".into(),
        trace_id: None,
        created: 1,
        expires: 10,
        approvals_required: 2,
        approvals: vec![Approval {
            approver: "erin".into(),
            reason: "ok".into(),
            time: 2,
        }],
        state: RequestState::Pending,
        closed_by: String::new(),
        closed_reason: String::new(),
        move_revision: 0,
        rollout: None,
    };
    assert!(request
        .refuses_approver("dana", "alice")
        .unwrap()
        .contains("made request 7"));
    assert!(request
        .refuses_approver("alice", "alice")
        .unwrap()
        .contains("author"));
    assert!(request
        .refuses_approver("erin", "alice")
        .unwrap()
        .contains("counts once"));
    assert_eq!(request.refuses_approver("frank", "alice"), None);
    assert_eq!(request.state_at(9), RequestState::Pending);
    assert_eq!(request.state_at(10), RequestState::Expired);
}
