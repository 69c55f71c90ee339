//! The built-in mock backend (placeholder, being written).

/// Knobs of a `kind = "mock"` backend.
#[derive(Debug, Clone, PartialEq)]
pub struct MockSettings {
    /// Delay before the answer (or its first event).
    pub latency: std::time::Duration,
    /// Completion tokens per answer.
    pub completion_tokens: u32,
    /// Streaming speed; 0 means as fast as possible.
    pub tokens_per_second: f64,
    /// Model name reported in answers when the request names none.
    pub model: String,
    /// Length of each embedding vector.
    pub embedding_dimensions: usize,
}
