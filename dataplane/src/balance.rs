//! Balance (placeholder).
