//! A short fuzz smoke on every `cargo test`, on the stable toolchain: each
//! harness of `promptreg::testing` (the cargo-fuzz targets in `fuzz/`) runs
//! over its seed corpus (`fuzz/corpus/<target>/seed-*`), its built-in seeds,
//! the regression inputs below, and a few thousand inputs made from those by
//! a seeded xorshift: mutated seeds, spliced seeds and random bytes. The same
//! inputs every run; `scripts/fuzz.sh` runs the real fuzzers for longer.
//!
//! `PROMPTREG_FUZZ_SMOKE_ROUNDS` sets the generated inputs per target
//! (default 5000); `PROMPTREG_FUZZ_SMOKE_SEED` changes the generator's seed.

mod support;

use promptreg::testing;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use support::rng::Rng;

// Inputs that once broke an invariant, checked every run.

const TEMPLATE_REGRESSIONS: &[&[u8]] = &[];

/// A model config that normalisation makes longer (`1e5` is stored as
/// `100000.0`) was accepted under the limit and stored over it, so
/// publishing the served version again was refused (tiny limits here; the
/// test below has the default 16 KiB).
const DIGEST_REGRESSIONS: &[&[u8]] =
    &[b"\x80{\"tttttttttttttttttttttttttttttttt\":1e5}\xff\xfftiny"];

/// Sealing a version record with a model config but no template (a damaged
/// record) dropped the model config too.
const RECORDS_REGRESSIONS: &[&[u8]] = &[b"\x07\x01{\"name\":\"fuzz/prompt\",\"version\":1,\
    \"digest\":\"sha256:5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a\",\
    \"variables\":[],\"model_config_json\":\"{}\",\"author\":\"ci\",\"description\":\"\",\
    \"tags\":{},\"created_at\":0,\"revision\":1}"];

const REQUESTS_REGRESSIONS: &[&[u8]] = &[];

#[test]
fn template_parser_survives_the_fuzz_smoke() {
    check("template", testing::template, TEMPLATE_REGRESSIONS);
}

#[test]
fn canonical_digest_survives_the_fuzz_smoke() {
    check("digest", testing::digest, DIGEST_REGRESSIONS);
}

/// The first digest regression at the default limit: 4 000 numbers in
/// under 16 KiB that normalise to about 36 KiB.
#[test]
fn a_model_config_over_the_limit_once_normalised_is_refused() {
    let numbers = vec!["1e5"; 4000].join(",");
    let config = format!("{{\"n\":[{numbers}]}}");
    assert!(config.len() <= 16 * 1024);
    let mut input = vec![0u8];
    input.extend_from_slice(config.as_bytes());
    input.extend_from_slice(b"\xff\xffx");
    run("digest", testing::digest, &input, "4000 numbers");
    let refused = promptreg::domain::Content::validate(
        promptreg::domain::TemplateBody::Text("x".into()),
        &[],
        &config,
        &promptreg::domain::Limits::default(),
    )
    .expect_err("normalised, the config is over the limit");
    assert_eq!(refused.field, "model_config_json");
    assert!(refused.rule.contains("once normalised"), "{refused}");
}

#[test]
fn record_decoder_survives_the_fuzz_smoke() {
    check("records", testing::records, RECORDS_REGRESSIONS);
}

#[test]
fn request_validation_survives_the_fuzz_smoke() {
    check("requests", testing::requests, REQUESTS_REGRESSIONS);
}

/// Byte strings some parser cares about; mutations insert them.
const TOKENS: &[&[u8]] = &[
    b"{{",
    b"}}",
    b"\\{{",
    b" ",
    b"\xff",
    b"\x01{",
    b"\"",
    b"\":",
    b",\"",
    b"null",
    b"[]",
    b"{}",
    b"1e5",
    b"-0.0",
    b"\\u0000",
    b"\\ud800",
    b"sha256:",
    b"/",
    b"..",
    b"latest",
    b"\xc3\xa9",
    b"\xf0\x9f\x98\x80",
    b"\x00",
    b"\x0a",
    b"\x12",
    b"\x1a",
    b"\x22",
];

/// Applies one random edit, the kinds libFuzzer applies.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let at = rng.index(input.len() + 1);
    match rng.index(9) {
        0 if !input.is_empty() => {
            let i = rng.index(input.len());
            input[i] ^= 1 << rng.index(8);
        }
        1 if !input.is_empty() => {
            let i = rng.index(input.len());
            input[i] = [0, 1, 0x7f, 0x80, 0xff, b'{', b'}', b'"'][rng.index(8)];
        }
        2 => {
            let token = TOKENS[rng.index(TOKENS.len())];
            input.splice(at..at, token.iter().copied());
        }
        3 => {
            let end = (at + 1 + rng.index(16)).min(input.len());
            input.drain(at.min(end)..end);
        }
        4 => {
            let end = (at + 1 + rng.index(32)).min(input.len());
            let copy = input[at.min(end)..end].to_vec();
            let to = rng.index(input.len() + 1);
            input.splice(to..to, copy);
        }
        5 => {
            // Splice: this input's head, another seed's tail.
            let other = &seeds[rng.index(seeds.len())];
            let from = rng.index(other.len() + 1);
            input.truncate(at);
            input.extend_from_slice(&other[from..]);
        }
        6 => input.truncate(at),
        7 => {
            let len = 1 + rng.index(8);
            let random = rng.bytes(len);
            input.splice(at..at, random);
        }
        _ => {
            // Widen a field: repeat one byte many times.
            let byte = input.get(at).copied().unwrap_or(b'a');
            input.splice(at..at, std::iter::repeat_n(byte, 1 + rng.index(300)));
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed files of a target; grown corpus files are not read, so a local
/// `cargo fuzz run` does not slow this test down.
fn seed_files(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| std::fs::read(path).expect("a readable seed file"))
        .collect()
}

/// Runs one input. A failure names the target, saves the input to a file
/// and says how to replay it.
fn run(target: &str, harness: fn(&[u8]), input: &[u8], origin: &str) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| harness(input))) {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz_smoke");
        let file = dir.join(format!(
            "{target}-{}",
            origin.replace([' ', '(', ')', '='], "_")
        ));
        let saved = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&file, input))
            .map_or_else(
                |e| format!("(not saved: {e})"),
                |()| file.display().to_string(),
            );
        let mut shown = input.escape_ascii().to_string();
        if shown.len() > 2000 {
            shown.truncate(2000);
            shown.push('…');
        }
        panic!(
            "the {target} harness failed on {origin}: {}\n\
             input ({} bytes, saved as {saved}): b\"{shown}\"\n\
             replay: `cargo +nightly fuzz run {target} {saved}`, then add the input to the \
             regressions in tests/fuzz_smoke.rs",
            message.chars().take(2000).collect::<String>(),
            input.len(),
        );
    }
}

fn check(target: &str, harness: fn(&[u8]), regressions: &[&[u8]]) {
    let mut seeds = seed_files(target);
    assert!(!seeds.is_empty(), "no seed files for {target}");
    seeds.extend(testing::seeds(target));
    seeds.sort();
    seeds.dedup();
    for (i, seed) in seeds.iter().enumerate() {
        run(target, harness, seed, &format!("seed {i}"));
    }
    for (i, input) in regressions.iter().enumerate() {
        run(target, harness, input, &format!("regression {i}"));
    }

    let rounds = env_number("PROMPTREG_FUZZ_SMOKE_ROUNDS", 5000);
    let seed = env_number("PROMPTREG_FUZZ_SMOKE_SEED", 0x9e37_79b9_7f4a_7c15);
    let mut rng = Rng::new(seed ^ target.len() as u64 ^ u64::from(target.as_bytes()[0]) << 32);
    for round in 0..rounds {
        let input = if round % 10 == 0 {
            let len = rng.index(96);
            rng.bytes(len)
        } else {
            let mut input = seeds[rng.index(seeds.len())].clone();
            for _ in 0..1 + rng.index(4) {
                mutate(&mut rng, &mut input, &seeds);
            }
            input
        };
        run(
            target,
            harness,
            &input,
            &format!("generated input {round} (PROMPTREG_FUZZ_SMOKE_SEED={seed})"),
        );
    }
}
