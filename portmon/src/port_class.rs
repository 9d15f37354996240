//! Port range classes (placeholder until the registry lands).
