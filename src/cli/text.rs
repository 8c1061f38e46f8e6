//! Small pieces of the CLI's text output: tables, short digests, relative
//! ages, counted nouns. JSON output never goes through these: it keeps full
//! digests and absolute times, one object per line.

use super::json::emit;
use super::json::{kind_name, time_text};
use super::{ClientOptions, OutputFormat};
use crate::grpc::pb;
use crate::grpc::timestamp::from_timestamp;
use crate::time::{format_micros, now_micros};
use serde::Serialize;

/// The rows of a listing (`list`, `versions`, `labels`, `history`, `fleet`,
/// `audit`, `keys`): in text mode one table with a header and aligned
/// columns, printed by `finish` once every page is in (alignment needs every
/// row); in JSON mode one object per line, printed as each row comes.
pub(super) struct Listing<'a> {
    options: &'a ClientOptions,
    header: &'static [&'static str],
    /// What an empty listing says instead of a lone header, e.g. "no prompts".
    empty: &'static str,
    rows: Vec<Vec<String>>,
}

impl<'a> Listing<'a> {
    pub(super) fn new(
        options: &'a ClientOptions,
        header: &'static [&'static str],
        empty: &'static str,
    ) -> Listing<'a> {
        Listing {
            options,
            header,
            empty,
            rows: Vec::new(),
        }
    }

    /// One row: its text cells (one per header column; made only in text
    /// mode) and its JSON object.
    pub(super) fn row(&mut self, cells: impl FnOnce() -> Vec<String>, json: impl Serialize) {
        match self.options.output {
            OutputFormat::Text => self.rows.push(cells()),
            OutputFormat::Json => emit(self.options, String::new, json),
        }
    }

    /// Prints the table (text mode; JSON rows are already out).
    pub(super) fn finish(self) {
        if self.options.output != OutputFormat::Text {
            return;
        }
        if self.rows.is_empty() {
            println!("{}", self.empty);
        } else {
            println!("{}", table(self.header, &self.rows));
        }
    }
}

/// A header row and rows, each column padded to its widest cell, two
/// spaces apart; the last column is not padded (it holds free text such as
/// a reason). Cells are single lines: a newline or tab in one is shown as a
/// space, so a row stays one line.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let clean = |cell: &str| cell.replace(['\n', '\r', '\t'], " ");
    let lines: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(
            rows.iter()
                .map(|row| row.iter().map(|c| clean(c)).collect()),
        )
        .collect();
    let columns = header.len();
    let mut widths = vec![0; columns];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    lines
        .iter()
        .map(|line| {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    text.push_str(cell);
                } else {
                    let pad = widths[i] - cell.chars().count();
                    text.push_str(cell);
                    text.push_str(&" ".repeat(pad + 2));
                }
            }
            text.trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How many hex digits of a digest text output shows.
pub(super) const SHORT_DIGEST_HEX: usize = 12;

/// `sha256:` and the first 12 hex digits: enough to tell versions apart by
/// eye, and a prefix `whois` and `get --digest` accept.
pub(super) fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) if hex.len() > SHORT_DIGEST_HEX => {
            format!("{algorithm}:{}", &hex[..SHORT_DIGEST_HEX])
        }
        _ => digest.to_string(),
    }
}

/// Free text (an audit entry's detail) with every full `sha256:<64 hex>`
/// in it shortened as `short_digest` does.
pub(super) fn short_digests_in(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let full = word
                .strip_prefix("sha256:")
                .is_some_and(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()));
            if full {
                short_digest(word)
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// "1 agent", "3 agents": a count and a noun that agrees with it (the
/// plural adds "s"; see `counted_as` for the others).
pub(super) fn counted(n: impl Into<u64>, noun: &str) -> String {
    counted_as(n, noun, &format!("{noun}s"))
}

/// "1 ledger entry", "3 ledger entries".
pub(super) fn counted_as(n: impl Into<u64>, singular: &str, plural: &str) -> String {
    match n.into() {
        1 => format!("1 {singular}"),
        n => format!("{n} {plural}"),
    }
}

/// How long ago a time was, for a person: "3 s ago", "5 min ago", "2 h ago",
/// "4 d ago" ("never" when unset).
pub(super) fn ago(ts: &Option<prost_types::Timestamp>) -> String {
    let Some(ts) = ts else {
        return "never".to_string();
    };
    let micros = from_timestamp(ts);
    let seconds = (now_micros() - micros).max(0) / 1_000_000;
    match seconds {
        s if s < 120 => format!("{s} s ago"),
        s if s < 2 * 3600 => format!("{} min ago", s / 60),
        s if s < 2 * 86_400 => format!("{} h ago", s / 3600),
        s => format!("{} d ago ({})", s / 86_400, format_micros(micros)),
    }
}

/// A version number for text, `-` for none.
pub(super) fn version_text(version: u64) -> String {
    if version == 0 {
        "-".to_string()
    } else {
        format!("v{version}")
    }
}

/// A version and its content, as `get` prints it.
pub(super) fn version_details(v: &pb::Version) -> String {
    let mut out = format!(
        "{} v{} {}\nauthor: {}\ncreated: {}\nrevision: {}\n",
        v.name,
        v.version,
        short_digest(&v.digest),
        v.author,
        time_text(&v.created_at),
        v.revision
    );
    if !v.description.is_empty() {
        out.push_str(&format!("description: {}\n", v.description));
    }
    if !v.variables.is_empty() {
        out.push_str(&format!("variables: {}\n", v.variables.join(", ")));
    }
    out.push_str(&format!("model config: {}\n", v.model_config_json));
    let mut tags: Vec<_> = v.tags.iter().collect();
    tags.sort();
    for (k, val) in tags {
        out.push_str(&format!("tag: {k}={val}\n"));
    }
    out.push_str("---\n");
    match v.template.as_ref().and_then(|t| t.kind.as_ref()) {
        Some(pb::template::Kind::Text(text)) => out.push_str(text),
        Some(pb::template::Kind::Chat(chat)) => {
            for m in &chat.messages {
                out.push_str(&format!("[{}]\n{}\n", m.role, m.content));
            }
        }
        None => {}
    }
    out.trim_end().to_string()
}

/// One move of `history`, as table cells.
pub(super) fn move_row(m: &pb::LabelMove) -> Vec<String> {
    vec![
        m.revision.to_string(),
        time_text(&m.time),
        kind_name(m.kind).to_string(),
        format!(
            "{} -> {}",
            version_text(m.from_version),
            version_text(m.to_version)
        ),
        short_digest(&m.digest),
        actor_text(m),
        m.trace_id.clone(),
        m.reason.clone(),
    ]
}

/// Who moved it, with how release policy cleared the move: `dana (request
/// 7, approved by erin, frank)`, `oncall (emergency)`.
pub(super) fn actor_text(m: &pb::LabelMove) -> String {
    let mut text = m.actor.clone();
    if m.request_id != 0 {
        text.push_str(&format!(
            " (request {}, approved by {})",
            m.request_id,
            m.approvers.join(", ")
        ));
    }
    if m.emergency {
        text.push_str(" (emergency)");
    }
    text
}

/// A move on one line (`resolve`'s "set by").
pub(super) fn move_text(m: &pb::LabelMove) -> String {
    let side = |v: u64| {
        if v == 0 {
            "-".to_string()
        } else {
            format!("v{v}")
        }
    };
    let mut line = format!(
        "revision {}\t{}\t{}\t{} -> {}\t{}\t{}",
        m.revision,
        time_text(&m.time),
        kind_name(m.kind),
        side(m.from_version),
        side(m.to_version),
        actor_text(m),
        m.reason
    );
    if !m.trace_id.is_empty() {
        line.push_str(&format!("\ttrace {}", m.trace_id));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_digests_keep_the_algorithm_and_twelve_hex_digits() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_digest(&digest), "sha256:abababababab");
        assert_eq!(short_digest(""), "");
        assert_eq!(short_digest("sha256:abc"), "sha256:abc");
    }

    #[test]
    fn full_digests_in_free_text_are_shortened() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            short_digests_in(&format!("{digest} -> v2 sha256:abc")),
            "sha256:abababababab -> v2 sha256:abc"
        );
    }

    #[test]
    fn ages_are_seconds_minutes_hours_then_days() {
        let before = |seconds: i64| {
            Some(crate::grpc::timestamp::to_timestamp(
                now_micros() - seconds * 1_000_000,
            ))
        };
        assert_eq!(ago(&before(300)), "5 min ago");
        assert_eq!(ago(&before(3 * 3600 + 60)), "3 h ago");
        assert!(ago(&before(3 * 86_400)).starts_with("3 d ago ("));
        assert_eq!(ago(&None), "never");
    }

    #[test]
    fn counted_nouns_agree_with_their_number() {
        assert_eq!(counted(1u32, "agent"), "1 agent");
        assert_eq!(counted(0u32, "agent"), "0 agents");
        assert_eq!(counted(3u32, "agent"), "3 agents");
        assert_eq!(counted_as(1u32, "entry", "entries"), "1 entry");
        assert_eq!(counted_as(2u32, "entry", "entries"), "2 entries");
    }

    #[test]
    fn tables_align_their_columns_under_a_header() {
        let rows = vec![
            vec!["v10".to_string(), "alice".into(), "a reason".into()],
            vec!["v9".to_string(), "bob\tsmith".into(), "two\nlines".into()],
        ];
        assert_eq!(
            table(&["VERSION", "AUTHOR", "REASON"], &rows),
            "VERSION  AUTHOR     REASON\n\
             v10      alice      a reason\n\
             v9       bob smith  two lines"
        );
    }
}
