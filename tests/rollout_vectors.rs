//! The rollout assignment (`bucket`) checked three ways against each other:
//! the formula and test vectors written in the proto's ASSIGNMENT paragraph,
//! an independent Python implementation of that text (system `python3`,
//! standard library only), the server's `promptreg::domain::rollout::bucket`,
//! and the example agent's own `bucket` (`examples/python/agent.py`, which
//! imports nothing outside the standard library at module level).
//!
//! The vectors are parsed from the proto, so changing the proto, the server
//! or either Python side alone fails this test.

use promptreg::domain::rollout::bucket;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The formula as the proto writes it. The Python below implements exactly
/// this line; if the proto's text changes, so must the script.
const FORMULA: &str = r#"bucket = floor(u64_be(SHA-256("promptreg.bucket.v1\n" || salt || "\n" || key)[0..8]) * 10000 / 2^64)"#;

/// Reads `[[salt, key], ...]` as JSON on stdin and prints
/// `{"proto": [...], "agent": [...]}`: the buckets by the proto's formula
/// (exact integers: Python's ints do not overflow) and by agent.py's
/// `bucket`.
const SCRIPT: &str = r#"
import hashlib, importlib.util, json, sys

def bucket(salt, key):
    digest = hashlib.sha256(
        b"promptreg.bucket.v1\n" + salt.encode("utf-8") + b"\n" + key.encode("utf-8")
    ).digest()
    return int.from_bytes(digest[0:8], "big") * 10000 // 2**64

pairs = json.load(sys.stdin)
spec = importlib.util.spec_from_file_location("promptreg_example_agent", sys.argv[1])
agent = importlib.util.module_from_spec(spec)
spec.loader.exec_module(agent)
print(json.dumps({
    "proto": [bucket(s, k) for s, k in pairs],
    "agent": [agent.bucket(s, k) for s, k in pairs],
}))
"#;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn proto_text() -> String {
    let path = manifest_dir().join("proto/promptreg/v1/registry.proto");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The ASSIGNMENT paragraph of the proto's "Progressive rollouts" section:
/// from its `// ASSIGNMENT.` line up to the next paragraph heading.
fn assignment_paragraph(proto: &str) -> Vec<String> {
    let lines: Vec<String> = proto
        .lines()
        .map(|l| l.trim().trim_start_matches("//").trim().to_string())
        .collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("ASSIGNMENT."))
        .expect("the proto has an `// ASSIGNMENT.` paragraph");
    let end = lines[start..]
        .iter()
        .position(|l| l.starts_with("EXPOSURE AND EVIDENCE."))
        .map(|n| start + n)
        .expect("the ASSIGNMENT paragraph is followed by `// EXPOSURE AND EVIDENCE.`");
    lines[start..end].to_vec()
}

/// The double-quoted string literals of a line, in order (`\\` and `\"`
/// escapes allowed).
fn string_literals(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut s = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => s.push(chars.next().expect("escape at the end of a line")),
                Some(c) => s.push(c),
                None => panic!("unterminated string literal in {line:?}"),
            }
        }
        out.push(s);
    }
    out
}

/// The proto's test vectors: lines like `"s1", "agent-0"  → 5760` (a line
/// that starts with a string literal and has an arrow).
fn proto_vectors(paragraph: &[String]) -> Vec<(String, String, u32)> {
    paragraph
        .iter()
        .filter(|l| l.starts_with('"') && l.contains('→'))
        .map(|line| {
            let (pair, value) = line.split_once('→').expect("an arrow");
            let strings = string_literals(pair);
            assert_eq!(
                strings.len(),
                2,
                "a test vector is `\"salt\", \"key\" → bucket`: {line:?}"
            );
            let value: u32 = value
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("bucket of {line:?}: {e}"));
            (strings[0].clone(), strings[1].clone(), value)
        })
        .collect()
}

/// splitmix64: deterministic pairs, the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Characters of 1 to 4 UTF-8 bytes, the separator itself, and ones whose
/// code-point order differs from their UTF-16 order.
const ALPHABET: &[char] = &[
    'a',
    'z',
    'A',
    '0',
    '9',
    '-',
    '_',
    '.',
    '/',
    ' ',
    '\n',
    '\t',
    '"',
    '\\',
    'é',
    'ß',
    'ñ',
    'ю',
    'к',
    'ч',
    'α',
    'ω',
    'א',
    'ع',
    'あ',
    '中',
    '文',
    '\u{0301}',
    '\u{FFFD}',
    '\u{FEFF}',
    '\u{E000}',
    '😀',
    '🚀',
    '𝄞',
    '\u{10FFFF}',
    '\u{7F}',
    '\u{80}',
    '\u{7FF}',
    '\u{800}',
    '\u{FFFF}',
    '\u{10000}',
];

fn random_string(rng: &mut Rng) -> String {
    let len = match rng.below(10) {
        0 => 0,
        1 => 40 + rng.below(100),
        _ => 1 + rng.below(16),
    };
    (0..len)
        .map(|_| {
            if rng.below(3) == 0 {
                char::from(b'a' + rng.below(26) as u8)
            } else {
                ALPHABET[rng.below(ALPHABET.len())]
            }
        })
        .collect()
}

/// About a thousand (salt, key) pairs: the proto's vectors, empty salts and
/// keys, agent-id and tenant shapes, and random Unicode.
fn generated_pairs(vectors: &[(String, String, u32)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = vectors
        .iter()
        .map(|(s, k, _)| (s.clone(), k.clone()))
        .collect();
    pairs.push((String::new(), String::new()));
    pairs.push(("\n".into(), String::new()));
    pairs.push((String::new(), "\n".into()));
    let mut rng = Rng(0x7072_6f6d_7074_7265);
    for i in 0..200 {
        pairs.push((format!("{:016x}", rng.next()), format!("agent-{i}")));
    }
    for i in 0..100 {
        pairs.push(("rollout-7".into(), format!("tenant-{i}")));
    }
    while pairs.len() < 1000 {
        let salt = random_string(&mut rng);
        let key = random_string(&mut rng);
        pairs.push((salt, key));
    }
    pairs
}

/// Runs SCRIPT with system python3 on `pairs`: (proto formula, agent.py).
fn python_buckets(pairs: &[(String, String)]) -> (Vec<u32>, Vec<u32>) {
    let agent = manifest_dir().join("examples/python/agent.py");
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&agent)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `python3` ({e}): this test needs it on PATH"));
    let input = serde_json::to_vec(&json!(pairs)).expect("pairs as JSON");
    child
        .stdin
        .take()
        .expect("python stdin")
        .write_all(&input)
        .expect("write the pairs to python3");
    let out = child.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "python3 failed ({}):\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python3 printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let list = |field: &str| -> Vec<u32> {
        answer[field]
            .as_array()
            .unwrap_or_else(|| panic!("no {field} list: {answer}"))
            .iter()
            .map(|v| v.as_u64().expect("a bucket") as u32)
            .collect()
    };
    (list("proto"), list("agent"))
}

#[test]
fn proto_vectors_python_and_server_agree() {
    let proto = proto_text();
    let paragraph = assignment_paragraph(&proto);
    assert!(
        paragraph.iter().any(|l| l == FORMULA),
        "the ASSIGNMENT paragraph no longer says\n  {FORMULA}\n(update this test's Python \
         script to the new formula):\n{}",
        paragraph.join("\n")
    );
    let vectors = proto_vectors(&paragraph);
    assert!(
        vectors.len() >= 7,
        "the proto's test vectors went missing: {vectors:?}"
    );
    assert!(
        vectors.iter().any(|(s, _, _)| s.is_empty())
            && vectors.iter().any(|(_, k, _)| k.is_empty()),
        "the vectors cover an empty salt and an empty key: {vectors:?}"
    );
    assert!(
        vectors
            .iter()
            .any(|(s, k, _)| !s.is_ascii() && !k.is_ascii()),
        "the vectors cover non-ASCII strings: {vectors:?}"
    );

    let pairs = generated_pairs(&vectors);
    assert!(pairs.len() >= 1000);
    let (by_proto, by_agent) = python_buckets(&pairs);
    assert_eq!(by_proto.len(), pairs.len());
    assert_eq!(by_agent.len(), pairs.len());

    // 1. The documented vectors, by the documented formula and by the server.
    for (i, (salt, key, expected)) in vectors.iter().enumerate() {
        assert_eq!(
            by_proto[i], *expected,
            "the proto's formula (in Python) gives {salt:?}, {key:?} → {}, the proto says {expected}",
            by_proto[i]
        );
        assert_eq!(
            bucket(salt, key),
            *expected,
            "promptreg::domain::rollout::bucket({salt:?}, {key:?}) disagrees with the proto's vector"
        );
    }

    // 2. Every pair: the server and agent.py compute what the proto says.
    let mut mismatches = Vec::new();
    for (i, (salt, key)) in pairs.iter().enumerate() {
        let server = bucket(salt, key);
        assert!(server < 10_000, "bucket({salt:?}, {key:?}) = {server}");
        if server != by_proto[i] || by_agent[i] != by_proto[i] {
            mismatches.push(format!(
                "{salt:?}, {key:?}: proto formula {}, server {server}, agent.py {}",
                by_proto[i], by_agent[i]
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} pairs disagree:\n{}",
        mismatches.len(),
        pairs.len(),
        mismatches.join("\n")
    );

    // The pairs are not degenerate: they spread over the whole range.
    let (low, high) = (
        by_proto.iter().min().copied().unwrap_or(0),
        by_proto.iter().max().copied().unwrap_or(0),
    );
    assert!(low < 100 && high > 9_900, "buckets from {low} to {high}");
    let distinct: std::collections::BTreeSet<_> = by_proto.iter().collect();
    assert!(distinct.len() > 900, "{} distinct buckets", distinct.len());
}

#[test]
fn the_vector_parser_reads_the_documented_shape() {
    let paragraph = vec![
        "ASSIGNMENT. An agent's bucket is".to_string(),
        r#""s1", "agent-0"                → 5760"#.to_string(),
        r#""",   "a\"b"                   → 1"#.to_string(),
    ];
    assert_eq!(
        proto_vectors(&paragraph),
        [
            ("s1".to_string(), "agent-0".to_string(), 5760),
            (String::new(), "a\"b".to_string(), 1)
        ]
    );
}
