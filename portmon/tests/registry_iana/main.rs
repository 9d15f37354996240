//! Everything that reads IANA's full registry (reference data, never copied
//! into the repository), in one test binary that finds the file once
//! (`support/iana.rs` says where). Without it, `the_registry_is_there` fails
//! with what is missing and the three ways to provide it, and the other
//! tests, which have nothing to check, return at once.

use std::{path::PathBuf, sync::OnceLock};

use portmon::registry::Registry;

mod facts;
mod lookup;
mod update;

#[path = "../support/iana.rs"]
mod source;

#[path = "../support/lookup.rs"]
mod cli;

/// The registry file, its bytes and what portmon makes of it.
struct Iana {
    path: PathBuf,
    text: String,
    registry: Registry,
}

/// Where the registry is, or the one line saying why there is none.
fn located() -> &'static Result<PathBuf, String> {
    static LOCATED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    LOCATED.get_or_init(source::locate_for_this_binary)
}

/// IANA's registry, loaded once for every test; `None` when there is no
/// copy (`the_registry_is_there` says so). A copy that does not load fails
/// every test that reads it.
fn iana() -> Option<&'static Iana> {
    static IANA: OnceLock<Option<Iana>> = OnceLock::new();
    IANA.get_or_init(|| {
        let path = located().as_ref().ok()?.clone();
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let registry = Registry::from_file(&path).unwrap_or_else(|e| panic!("{e:#?}"));
        Some(Iana { path, text, registry })
    })
    .as_ref()
}

#[test]
fn the_registry_is_there() {
    if let Err(missing) = located() {
        panic!("{missing}");
    }
}
