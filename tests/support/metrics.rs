//! Reading a server's Prometheus endpoint from a test: a free port for
//! `--metrics-listen`, one scrape, one sample.

use std::io::{Read as _, Write as _};
use std::time::Duration;

/// How long a scrape may take to answer on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// A loopback port free now (for `--metrics-listen 127.0.0.1:PORT`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics` over a plain socket; the body.
pub fn scrape(address: &str) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            write!(
                stream,
                "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut response = String::new();
            if stream.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/1.1 200")
            {
                return response
                    .split_once("\r\n\r\n")
                    .map(|(_, body)| body.to_string())
                    .unwrap_or_default();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/metrics never answered on {address}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the sample of `metric` whose labels include all of `labels`.
pub fn sample(body: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
