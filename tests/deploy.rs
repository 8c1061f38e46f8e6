//! The files in `deploy/` are not run here (no Docker engine, no cluster), so
//! these tests hold them to the promises deploy/README.md makes: nothing is
//! published beyond loopback by default, no anonymous admin, the image name
//! the manifests use is the one the build command makes, and the systemd
//! unit's settings can be changed with a drop-in.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `- "…"` entries under every `ports:` key of a compose file.
fn compose_port_mappings(compose: &str) -> Vec<String> {
    let mut mappings = Vec::new();
    let mut in_ports = false;
    for line in compose.lines() {
        let trimmed = line.trim();
        if trimmed == "ports:" {
            in_ports = true;
            continue;
        }
        if !in_ports || trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_prefix("- ") {
            Some(entry) => {
                let entry = entry.split('#').next().unwrap_or_default().trim();
                mappings.push(entry.trim_matches('"').to_string());
            }
            None => in_ports = false,
        }
    }
    mappings
}

#[test]
fn compose_publishes_every_port_on_loopback_only() {
    let compose = repo_file("deploy/observability/docker-compose.yml");
    let mappings = compose_port_mappings(&compose);
    assert!(
        mappings.len() >= 5,
        "expected the stack's port mappings, found {mappings:?}"
    );
    for mapping in &mappings {
        assert!(
            mapping.starts_with("127.0.0.1:"),
            "port mapping {mapping:?} is published on every interface"
        );
    }
}

#[test]
fn compose_grafana_has_no_anonymous_admin_and_no_default_password() {
    let compose = repo_file("deploy/observability/docker-compose.yml");
    let setting = |name: &str| {
        compose
            .lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .map(|value| value.trim().trim_matches('"').to_string())
    };
    assert_ne!(
        setting("GF_AUTH_ANONYMOUS_ENABLED").as_deref(),
        Some("true")
    );
    assert_eq!(setting("GF_AUTH_ANONYMOUS_ORG_ROLE"), None);
    let password = setting("GF_SECURITY_ADMIN_PASSWORD").expect("the admin password setting");
    assert!(
        password.starts_with("${GRAFANA_ADMIN_PASSWORD:?"),
        "Grafana's admin password must come from the operator, found {password:?}"
    );
}

#[test]
fn kubernetes_image_is_the_one_the_build_command_makes() {
    let readme = repo_file("deploy/README.md");
    let build = readme
        .lines()
        .find(|line| line.starts_with("docker build "))
        .expect("deploy/README.md has a docker build command");
    let tag = build
        .split_whitespace()
        .skip_while(|word| *word != "-t")
        .nth(1)
        .expect("the build command names its image with -t");
    assert!(
        tag.contains(':'),
        "the build command's image {tag:?} should carry a version tag"
    );
    let manifest = repo_file("deploy/kubernetes/promptreg.yaml");
    let image = manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("image:"))
        .map(|value| {
            value
                .split('#')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .expect("the manifest names an image");
    assert_eq!(
        image, tag,
        "the manifest's image is not what `{build}` builds"
    );
    let run = readme
        .lines()
        .skip_while(|line| !line.starts_with("docker run "))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        run.contains(tag),
        "the docker run command should run {tag}: {run}"
    );
}

#[test]
fn systemd_unit_takes_every_setting_from_the_environment() {
    let unit = repo_file("deploy/systemd/promptreg.service");
    let exec_start = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    assert_eq!(
        exec_start.trim(),
        "/usr/local/bin/promptreg serve",
        "a flag in ExecStart would override the same PROMPTREG_* variable of a drop-in"
    );
    let variables: Vec<&str> = unit
        .lines()
        .filter_map(|line| line.strip_prefix("Environment=PROMPTREG_"))
        .filter_map(|assignment| assignment.split('=').next())
        .collect();
    assert!(variables.contains(&"LISTEN") && variables.contains(&"DATA_DIR"));

    let help = Command::new(env!("CARGO_BIN_EXE_promptreg"))
        .args(["serve", "--help"])
        .output()
        .expect("run promptreg serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for variable in variables {
        assert!(
            help.contains(&format!("[env: PROMPTREG_{variable}=")),
            "the unit sets PROMPTREG_{variable}, which `promptreg serve` does not read"
        );
    }
}

#[test]
fn the_tree_holds_no_stale_patches() {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name == ".git" {
                continue;
            }
            if path.is_dir() {
                walk(&path, found);
            } else if path
                .extension()
                .is_some_and(|ext| ext == "patch" || ext == "diff")
            {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new(env!("CARGO_MANIFEST_DIR")), &mut found);
    assert!(found.is_empty(), "patch files in the tree: {found:?}");
}

/// Every alert rule has a `runbook_url` pointing at a row of the README's
/// failure-mode table, and names only metrics the server exports.
#[test]
fn every_alert_has_a_runbook_row_and_names_real_metrics() {
    let alerts = repo_file("deploy/observability/alerts.yml");
    let readme = repo_file("README.md");
    let metrics = repo_file("src/telemetry/metrics.rs");
    let rules = alerts.matches("- alert: ").count();
    let runbooks: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: "))
        .collect();
    assert!(rules >= 10, "expected the alert rules, found {rules}");
    assert_eq!(runbooks.len(), rules, "every rule needs a runbook_url");
    for url in runbooks {
        let anchor = url
            .split_once("README.md#")
            .map(|(_, a)| a)
            .unwrap_or_else(|| panic!("runbook_url {url} is not a README anchor"));
        assert!(
            readme.contains(&format!("<a id=\"{anchor}\"></a>")),
            "runbook_url {url}: the README has no row with id {anchor}"
        );
    }
    for word in alerts.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        let Some(name) = word.strip_prefix("promptreg_") else {
            continue;
        };
        let base = name
            .strip_suffix("_bucket")
            .unwrap_or(name)
            .trim_end_matches("_count")
            .trim_end_matches("_sum");
        assert!(
            metrics.contains(&format!("\"promptreg_{base}\"")),
            "alerts.yml names promptreg_{name}, which src/telemetry/metrics.rs does not export"
        );
    }
    let prometheus = repo_file("deploy/observability/prometheus.yml");
    assert!(
        prometheus.contains("- alerts.yml"),
        "prometheus.yml does not load alerts.yml"
    );
    let compose = repo_file("deploy/observability/docker-compose.yml");
    assert!(compose.contains("./alerts.yml:/etc/prometheus/alerts.yml"));
}
