//! Config loading (placeholder, being written).
