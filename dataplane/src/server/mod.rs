//! Server (placeholder, being written).
