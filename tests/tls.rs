//! TLS and mTLS against the real binary, with a CA and certificates made
//! here (rcgen): serving TLS, client certificates as principals, the
//! plaintext/TLS mismatch in both directions, and reloading certificates
//! without a restart (on a file change and on SIGHUP).

mod support;

use rcgen::SanType;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use support::certs::{dns, uri, Ca};
use support::{binary, ServerProcess};

/// Writes `text` to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The TLS files of a server: its certificate, key and the CA's
/// certificate.
struct ServerFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn server_files(dir: &Path, ca: &Ca) -> ServerFiles {
    let (cert, key) = ca.server();
    ServerFiles {
        cert: write(dir, "server.pem", &cert),
        key: write(dir, "server.key", &key),
        ca: write(dir, "ca.pem", &ca.pem),
    }
}

fn start_tls(data: &Path, files: &ServerFiles, extra: &[&str]) -> ServerProcess {
    let mut args = vec![
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(data, &args)
}

/// `https://localhost:PORT` of a server that logged `http://127.0.0.1:PORT`.
fn https_url(server: &ServerProcess) -> String {
    let port = server.url.rsplit(':').next().unwrap();
    format!("https://localhost:{port}")
}

/// Runs the CLI with exactly these settings (no token unless given).
fn cli(server: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = support::cli_command(server);
    command.env_remove("PROMPTREG_TOKEN");
    for (name, value) in env {
        command.env(name, value);
    }
    command.args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tls_serves_with_a_private_ca_and_refuses_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let files = server_files(dir.path(), &ca);
    let data = dir.path().join("data");
    let server = start_tls(&data, &files, &[]);
    let token = server.token.clone().expect("admin token");
    let token_file = write(dir.path(), "admin.token", &token);
    let url = https_url(&server);
    assert!(
        wait_for_log(&server, "transport=TLS"),
        "the start log names the transport"
    );

    let out = cli(
        &url,
        &["whoami"],
        &[
            ("PROMPTREG_CA_CERT", &files.ca),
            ("PROMPTREG_TOKEN_FILE", &token_file),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("admin"), "{}", stdout(&out));

    // The system roots do not know the test CA.
    let out = cli(&url, &["whoami"], &[("PROMPTREG_TOKEN_FILE", &token_file)]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("TLS handshake failed"),
        "{}",
        stderr(&out)
    );

    // A CA that did not sign the server's certificate is refused too.
    let other = write(dir.path(), "other-ca.pem", &Ca::new("other CA").pem);
    let out = cli(
        &url,
        &["whoami"],
        &[
            ("PROMPTREG_CA_CERT", &other),
            ("PROMPTREG_TOKEN_FILE", &token_file),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));
}

#[test]
fn plaintext_and_tls_mismatches_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let files = server_files(dir.path(), &ca);
    let tls_server = start_tls(&dir.path().join("tls"), &files, &[]);
    let port = tls_server.url.rsplit(':').next().unwrap().to_string();

    // A plaintext client against the TLS port.
    let out = cli(&format!("http://localhost:{port}"), &["whoami"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("serves TLS") && stderr(&out).contains("https://"),
        "{}",
        stderr(&out)
    );
    let logged = wait_for_log(&tls_server, "plaintext client connected to this TLS port");
    assert!(logged, "{}", tls_server.stderr.lock().unwrap());

    // A TLS client against a plaintext port.
    let plain = ServerProcess::start(&dir.path().join("plain"), &[]);
    let port = plain.url.rsplit(':').next().unwrap().to_string();
    let out = cli(
        &format!("https://localhost:{port}"),
        &["whoami"],
        &[("PROMPTREG_CA_CERT", &files.ca)],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not serve TLS") && stderr(&out).contains("http://"),
        "{}",
        stderr(&out)
    );

    // TLS files with a plaintext address is a usage error.
    let out = cli(&plain.url, &["whoami"], &[("PROMPTREG_CA_CERT", &files.ca)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("use https://"), "{}", stderr(&out));
}

fn wait_for_log(server: &ServerProcess, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if server.stderr.lock().unwrap().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn mtls_principals_come_from_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let files = server_files(dir.path(), &ca);
    let client_ca = Ca::new("client CA");
    let client_ca_file = write(dir.path(), "client-ca.pem", &client_ca.pem);
    let server = start_tls(
        &dir.path().join("data"),
        &files,
        &["--tls-client-ca", client_ca_file.to_str().unwrap()],
    );
    assert!(
        wait_for_log(&server, "transport=mTLS"),
        "the start log names the transport"
    );
    let url = https_url(&server);
    let token_file = write(dir.path(), "admin.token", server.token.as_deref().unwrap());

    let leaf = |name: &str, sans: Vec<SanType>, cn: &str| -> (PathBuf, PathBuf) {
        let (cert, key) = client_ca.leaf(sans, cn);
        (
            write(dir.path(), &format!("{name}.pem"), &cert),
            write(dir.path(), &format!("{name}.key"), &key),
        )
    };
    let admin = leaf("admin", vec![dns("ops.example")], "ops");
    let agent = leaf(
        "agent",
        vec![dns("agent.example"), uri("spiffe://test/support-agent")],
        "agent",
    );
    let by_dns = leaf("dns", vec![dns("billing.example")], "billing");
    let by_cn = leaf("cn", vec![], "nightly-job");
    let stranger = leaf("stranger", vec![dns("stranger.example")], "stranger");
    let as_client = |(cert, key): &(PathBuf, PathBuf)| -> Vec<(&'static str, PathBuf)> {
        vec![
            ("PROMPTREG_CA_CERT", files.ca.clone()),
            ("PROMPTREG_CLIENT_CERT", cert.clone()),
            ("PROMPTREG_CLIENT_KEY", key.clone()),
        ]
    };
    let run = |who: &[(&'static str, PathBuf)], args: &[&str]| -> Output {
        let env: Vec<(&str, &Path)> = who.iter().map(|(k, v)| (*k, v.as_path())).collect();
        cli(&url, args, &env)
    };

    // Without a client certificate the handshake is refused, token or not.
    let out = cli(
        &url,
        &["whoami"],
        &[
            ("PROMPTREG_CA_CERT", &files.ca),
            ("PROMPTREG_TOKEN_FILE", &token_file),
        ],
    );
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));

    // The admin token still works over mTLS; it grants the certificates.
    let mut admin_env = as_client(&admin);
    admin_env.push(("PROMPTREG_TOKEN_FILE", token_file.clone()));
    for (name, subject, role) in [
        ("support-agent", "spiffe://test/support-agent", "agent"),
        ("billing", "billing.example", "reader"),
        ("nightly", "nightly-job", "author"),
    ] {
        let out = run(
            &admin_env,
            &[
                "tokens",
                "create",
                name,
                "--role",
                role,
                "--subject",
                subject,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("certificate grant {name} for {subject}")),
            "{}",
            stdout(&out)
        );
        assert!(
            !stdout(&out).contains("prt_"),
            "no secret for a certificate"
        );
    }
    let out = run(
        &admin_env,
        &["publish", "support/refund", "--template", "Hello"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // The first URI SAN wins over the DNS SAN; then the DNS SAN; then the CN.
    for (who, principal) in [
        (&agent, "spiffe://test/support-agent"),
        (&by_dns, "billing.example"),
        (&by_cn, "nightly-job"),
    ] {
        let out = run(&as_client(who), &["whoami", "-o", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("\"principal\":\"{principal}\"")),
            "{}",
            stdout(&out)
        );
        assert!(stdout(&out).contains("\"credential\":\"certificate\""));
    }

    // The agent certificate reads but does not publish; the actor of what
    // the author certificate publishes is its principal.
    let out = run(&as_client(&agent), &["get", "support/refund"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        &as_client(&agent),
        &["publish", "support/refund", "--template", "Hi"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &as_client(&by_cn),
        &["publish", "support/refund", "--template", "Hi there"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&admin_env, &["audit", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("\"actor\":\"nightly-job\""),
        "{}",
        stdout(&out)
    );

    // A certificate of the CA without a grant is authenticated but may do
    // nothing; a revoked grant no longer authenticates.
    let out = run(&as_client(&stranger), &["get", "support/refund"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    // One grant in force per subject.
    let second = [
        "tokens",
        "create",
        "billing-2",
        "--role",
        "reader",
        "--subject",
        "billing.example",
    ];
    let out = run(&admin_env, &second);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("in force already"),
        "{}",
        stderr(&out)
    );
    let out = run(&admin_env, &["tokens", "revoke", "billing"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&as_client(&by_dns), &["get", "support/refund"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unauthenticated"), "{}", stderr(&out));
    // After the revocation a new grant for the subject may be made, and
    // it is the one that counts.
    let out = run(&admin_env, &second);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&as_client(&by_dns), &["get", "support/refund"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A certificate from another CA does not get through the handshake.
    let outsider_ca = Ca::new("outsider CA");
    let (cert, key) = outsider_ca.leaf(vec![uri("spiffe://test/support-agent")], "x");
    let outsider = (
        write(dir.path(), "outsider.pem", &cert),
        write(dir.path(), "outsider.key", &key),
    );
    let out = run(&as_client(&outsider), &["get", "support/refund"]);
    assert_ne!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn certificates_reload_on_file_change_and_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new("first CA");
    let files = server_files(dir.path(), &first);
    let server = start_tls(&dir.path().join("data"), &files, &[]);
    let url = https_url(&server);
    let token_file = write(dir.path(), "admin.token", server.token.as_deref().unwrap());
    let whoami_trusting = |ca: &Path| {
        cli(
            &url,
            &["whoami"],
            &[
                ("PROMPTREG_CA_CERT", ca),
                ("PROMPTREG_TOKEN_FILE", &token_file),
            ],
        )
    };
    let first_ca = files.ca.clone();
    let out = whoami_trusting(&first_ca);
    assert!(
        out.status.success(),
        "{}\n{}",
        stderr(&out),
        server.stderr.lock().unwrap()
    );

    // The files change in place (as a mounted secret does): picked up
    // within the poll interval, without a signal.
    let second = Ca::new("second CA");
    let second_ca = write(dir.path(), "second-ca.pem", &second.pem);
    let (cert, key) = second.server();
    std::fs::write(&files.key, key).unwrap();
    std::fs::write(&files.cert, cert).unwrap();
    assert!(
        eventually(|| whoami_trusting(&second_ca).status.success()),
        "the new certificate was not served; log:\n{}",
        server.stderr.lock().unwrap()
    );
    assert!(!whoami_trusting(&first_ca).status.success());
    assert!(wait_for_log(&server, "why=a file changed"));

    // A broken file keeps the certificate in use.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    send_hangup(&server);
    assert!(wait_for_log(&server, "cannot reload the TLS certificates"));
    assert!(whoami_trusting(&second_ca).status.success());

    // SIGHUP loads what is there now.
    let third = Ca::new("third CA");
    let third_ca = write(dir.path(), "third-ca.pem", &third.pem);
    let (cert, key) = third.server();
    std::fs::write(&files.key, key).unwrap();
    std::fs::write(&files.cert, cert).unwrap();
    send_hangup(&server);
    assert!(
        eventually(|| whoami_trusting(&third_ca).status.success()),
        "the certificate was not reloaded; log:\n{}",
        server.stderr.lock().unwrap()
    );
    assert!(wait_for_log(&server, "why=SIGHUP"));
}

fn send_hangup(server: &ServerProcess) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Whether `check` holds within 60 s.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

#[test]
fn bad_tls_files_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let files = server_files(dir.path(), &ca);
    let missing = dir.path().join("missing.pem");
    let garbage = write(dir.path(), "garbage.pem", "hello");
    for (cert, key, expect) in [
        (
            &missing,
            &files.key,
            "cannot read the certificate (--tls-cert)",
        ),
        (&garbage, &files.key, "holds no PEM certificate"),
        (&files.cert, &garbage, "private key (--tls-key)"),
    ] {
        let out = std::process::Command::new(binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{}", stderr(&out));
    }
    // --tls-key without --tls-cert is a usage error.
    let out = std::process::Command::new(binary())
        .args(["serve", "--tls-key"])
        .arg(&files.key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
