//! The port registry: IANA service names (placeholder until it lands).
