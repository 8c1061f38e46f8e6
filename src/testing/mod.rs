//! Test-only code: the fuzz harnesses and their seeds. Compiled only with the
//! `testkit` cargo feature, which `cargo test` turns on (the crate's
//! dev-dependency on itself) and no build a user makes does, so a release
//! build of the server never contains it.
//!
//! One file per fuzz target, each with its harness, the checks it runs and
//! its seed inputs (the seeds follow the harness's input layout, so they live
//! beside it); this file has what they share. Each harness takes arbitrary
//! bytes and panics only when an invariant of the code under test is broken.
//! The cargo-fuzz targets in `fuzz/fuzz_targets/` are one line each and call
//! these; `tests/fuzz_smoke.rs` runs them over the seed corpus and a few
//! thousand generated inputs on every `cargo test`. They live in the library,
//! hidden from the docs, because they reach crate-private code: the record
//! decoder of `store::records`, the data key behind sealing, and the request
//! conversions of `grpc::convert`. Nothing else uses this module.
//!
//! - [`template`] (`template.rs`): the `{{variable}}` parser against a
//!   second tokenizer written for this purpose; parse → render → parse;
//!   escaping; validation of a parsed template.
//! - [`digest`] (`digest.rs`): content built from the bytes through the
//!   server's own validation; the normalised content is a fixed point; the
//!   canonical form is deterministic and decodes back to the content; equal
//!   content, equal digest.
//! - [`records`] (`records.rs`): the on-disk record decoder (corrupt bytes
//!   are an error, never a panic), re-encoding as a fixed point, record →
//!   domain → record, sealing and the backup file format.
//! - [`requests`] (`requests.rs`): the bytes as a protobuf request (the
//!   first byte picks the message), through the server's validation and
//!   conversion: a value or INVALID_ARGUMENT with a bounded message, and what
//!   the server stores can be published again unchanged.
//!
//! Most harnesses split their input into text fields at `0xFF`, a byte that
//! never occurs in UTF-8, so the fuzzer can grow one field without moving
//! the others. A flag in the first byte picks `tiny_limits`, so that short
//! inputs also reach every "over the limit" branch.

mod digest;
mod records;
mod requests;
mod template;

pub use digest::digest;
pub use records::records;
pub use requests::requests;
pub use template::template;

use crate::domain::Limits;

/// Seed inputs per target, built with the real encoders so they follow the
/// current formats: `tests/fuzz_smoke.rs` mutates them, and the files in
/// `fuzz/corpus/` started as these.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "template" => template::seeds(),
        "digest" => digest::seeds(),
        "records" => records::seeds(),
        "requests" => requests::seeds(),
        _ => Vec::new(),
    }
}

/// The first 200 characters of `text`, for failure messages about large
/// inputs.
fn short(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
        None => format!("{text:?}"),
    }
}

/// Splits fuzz input into text fields at `0xFF` (see the module docs).
fn fields(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0xFF)
        .map(|field| String::from_utf8_lossy(field).into_owned())
        .collect()
}

/// Limits small enough that a fuzzer's short inputs cross each of them.
fn tiny_limits() -> Limits {
    Limits {
        max_name_bytes: 16,
        max_template_bytes: 48,
        max_chat_messages: 3,
        max_variables: 3,
        max_variable_name_bytes: 6,
        max_tags: 2,
        max_tag_value_bytes: 8,
        max_model_config_bytes: 40,
        max_actor_bytes: 8,
        max_text_bytes: 16,
        ..Limits::default()
    }
}

fn limits_for(flags: u8) -> Limits {
    if flags & 0x80 == 0 {
        Limits::default()
    } else {
        tiny_limits()
    }
}
