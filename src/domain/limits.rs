//! Size limits on what a request may carry, with their documented defaults.

/// Limits checked on every write. Each has a `--max-*` flag on `serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Prompt name length in bytes (default 128).
    pub max_name_bytes: usize,
    /// Template size in bytes: the text, or all chat message contents
    /// together (default 256 KiB).
    pub max_template_bytes: usize,
    /// Chat messages per template (default 256).
    pub max_chat_messages: usize,
    /// Declared variables per version (default 64).
    pub max_variables: usize,
    /// Length of one variable name in bytes (default 64).
    pub max_variable_name_bytes: usize,
    /// Tags per version (default 32).
    pub max_tags: usize,
    /// Length of one tag value in bytes (default 256).
    pub max_tag_value_bytes: usize,
    /// Model config JSON size in bytes (default 16 KiB).
    pub max_model_config_bytes: usize,
    /// Author, actor: length in bytes (default 256).
    pub max_actor_bytes: usize,
    /// Description and reason: length in bytes (default 4 KiB).
    pub max_text_bytes: usize,
    /// One request message, encoded, in bytes (default 4 MiB).
    pub max_request_bytes: usize,
    /// Concurrent HTTP/2 streams per connection (default 1000).
    pub max_streams_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_name_bytes: 128,
            max_template_bytes: 256 * 1024,
            max_chat_messages: 256,
            max_variables: 64,
            max_variable_name_bytes: 64,
            max_tags: 32,
            max_tag_value_bytes: 256,
            max_model_config_bytes: 16 * 1024,
            max_actor_bytes: 256,
            max_text_bytes: 4096,
            max_request_bytes: 4 * 1024 * 1024,
            max_streams_per_connection: 1000,
        }
    }
}
