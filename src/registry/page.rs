//! Pages of results and the page tokens this server issues.

use crate::domain::ValidationError;

/// Page sizes: the default when a request says 0, and the most one page holds.
pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// A page of results and the token for the next one (empty on the last).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

pub(super) fn page_size_of(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// Trims a page fetched with one extra item and returns the token for the
/// next page (empty when there is none).
pub(super) fn next_token<T>(
    items: &mut Vec<T>,
    size: usize,
    token_of: impl Fn(&T) -> String,
) -> String {
    if items.len() > size {
        items.truncate(size);
        items.last().map(token_of).unwrap_or_default()
    } else {
        String::new()
    }
}

pub(super) fn decode_token(token: &str) -> std::result::Result<String, ValidationError> {
    hex::decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ValidationError::new("page_token", "is not a token this server issued"))
}

pub(super) fn parse_number_token(token: &str) -> std::result::Result<Option<u64>, ValidationError> {
    match token {
        "" => Ok(None),
        token => token
            .parse()
            .map(Some)
            .map_err(|_| ValidationError::new("page_token", "is not a token this server issued")),
    }
}
