//! Where the full IANA registry for the tests and benches comes from. One
//! rule, in this one file: the registry tests, the registry bench and xtask
//! each include it (`#[path]`), so that `cargo xtask setup` looks where the
//! tests will, and the tests find a plain `cargo test`'s copy the same way.

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// Names the registry file; `cargo xtask test` and `bench` set it to the
/// copy `cargo xtask setup` found or downloaded.
pub const VAR: &str = "PORTMON_IANA_CSV";

/// The file's name in IANA's tree, in `shared/` and in the cache.
pub const FILE: &str = "service-names-port-numbers.csv";

/// No registry: where it was looked for, and why none could be had.
#[derive(Debug)]
pub struct Missing {
    /// `PORTMON_IANA_CSV`, when it was set to something that is no file.
    pub var: Option<PathBuf>,
    /// The copy in `shared/` beside the checkout.
    pub shared: PathBuf,
    /// The copy `cargo xtask setup` downloads under the target directory.
    pub cached: PathBuf,
    /// Why the download into `cached` failed, when one was tried.
    pub download: Option<String>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (shared, cached) = (self.shared.display(), self.cached.display());
        if let Some(var) = &self.var {
            return write!(
                f,
                "{VAR}={} is not a file: point it at a copy of IANA's {FILE}, or unset it to use \
                 {shared} or {cached}",
                var.display()
            );
        }
        match &self.download {
            None => write!(
                f,
                "no IANA registry for the tests: set {VAR} to a copy of IANA's {FILE}, put one at \
                 {shared}, or run `cargo xtask setup` to download one into {cached}"
            ),
            Some(why) => write!(
                f,
                "no IANA registry for the tests, and none can be downloaded ({why}): set {VAR} \
                 to a copy of IANA's {FILE}, put one at {shared}, or run `cargo xtask setup` where \
                 IANA is reachable (it downloads one into {cached})"
            ),
        }
    }
}

/// IANA's full registry for a checkout at `root` built into `target`:
/// `$PORTMON_IANA_CSV` when set, else `shared/data/iana/` beside the
/// checkout, else `<target>/iana/` where `cargo xtask setup` downloads it.
pub fn locate(root: &Path, target: &Path) -> Result<PathBuf, Missing> {
    let shared = root.parent().unwrap_or(root).join("shared/data/iana").join(FILE);
    let cached = target.join("iana").join(FILE);
    let var = std::env::var_os(VAR).filter(|v| !v.is_empty()).map(PathBuf::from);
    let found = match &var {
        Some(path) => path.is_file().then(|| path.clone()),
        None => [&shared, &cached].into_iter().find(|p| p.is_file()).cloned(),
    };
    found.ok_or(Missing {
        var,
        shared,
        cached,
        download: None,
    })
}

/// [`locate`] for the test or bench running now: the checkout of the crate
/// that includes this file, and the target directory its binary was built
/// into (`<target>/<profile>/deps/<binary>`).
pub fn locate_for_this_binary() -> Result<PathBuf, String> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().unwrap_or(manifest_dir);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary's path: {e}"))?;
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| format!("{} is not in a target directory", exe.display()))?;
    locate(root, target).map_err(|missing| missing.to_string())
}
