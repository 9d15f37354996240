//! `portmon registry update`: download IANA's CSV, check that it is whole,
//! and replace the installed copy atomically.
//!
//! The old file is only ever replaced by `rename(2)` of a fully written and
//! fsynced file in the same directory, so a reader (the daemon at start)
//! sees either the old registry or the new one, and a failed download,
//! a truncated body or a full disk leave the old file byte for byte.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use super::{iana_csv, ParseError, Transport, MAX_FILE_BYTES};

/// IANA's official CSV.
pub const IANA_CSV_URL: &str =
    "https://www.iana.org/assignments/service-names-port-numbers/service-names-port-numbers.csv";

/// Fewest records a whole registry has: the 2024 edition has 14,447, and
/// IANA does not remove records (it marks them), so fewer means truncated.
pub const MIN_RECORDS: usize = 10_000;

/// Assignments every edition of the registry holds; a file without them is
/// not IANA's registry, whatever its size.
pub const ANCHORS: [(u16, Transport, &str); 4] = [
    (22, Transport::Tcp, "ssh"),
    (53, Transport::Udp, "domain"),
    (80, Transport::Tcp, "http"),
    (443, Transport::Tcp, "https"),
];

/// The whole download, connection included; IANA's file is about 1.2 MB.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors updating the registry file; after any of them the old file is
/// unchanged.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// Only http:// and https:// URLs are fetched.
    #[error("unsupported URL {url:?}: expected https://… (or http://…)")]
    UnsupportedUrl {
        /// The URL given.
        url: String,
    },
    /// The download failed: no connection, an HTTP error status, a timeout,
    /// or a body over [`MAX_FILE_BYTES`].
    #[error("cannot download {url}")]
    Download {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The body is not a well-formed IANA CSV.
    #[error("the downloaded file is not a valid IANA registry CSV")]
    Invalid {
        /// Where and why it does not parse.
        #[source]
        source: ParseError,
    },
    /// The body parses but is too short to be the whole registry.
    #[error(
        "the downloaded registry has {records} records, fewer than the {min} of a whole one: truncated?"
    )]
    TooFewRecords {
        /// Records found.
        records: usize,
        /// [`MIN_RECORDS`].
        min: usize,
    },
    /// The body lacks an assignment of [`ANCHORS`].
    #[error("the downloaded registry lacks {name} on {port}/{transport}: not IANA's registry?")]
    MissingAnchor {
        /// The port.
        port: u16,
        /// Its transport.
        transport: Transport,
        /// The service expected there.
        name: &'static str,
    },
    /// Writing, syncing or renaming the new file failed.
    #[error("cannot write {path}")]
    Write {
        /// The file or directory written.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What an update installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The file replaced or created.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// Records it holds.
    pub records: usize,
}

/// Downloads the registry from `url`, validates it and installs it at
/// `output` (creating the directory if needed).
pub fn update(url: &str, output: &Path) -> Result<Installed, UpdateError> {
    let body = download(url)?;
    let records = validate(&body)?;
    install(&body, output)?;
    Ok(Installed {
        path: output.to_owned(),
        bytes: body.len(),
        records,
    })
}

/// Fetches `url` (https, or http for local mirrors and tests), at most
/// [`MAX_FILE_BYTES`]. Proxies come from the usual environment variables.
pub fn download(url: &str) -> Result<Vec<u8>, UpdateError> {
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("https" | "http")) {
        return Err(UpdateError::UnsupportedUrl { url: url.to_owned() });
    }
    let download_error = |source| UpdateError::Download {
        url: url.to_owned(),
        source: Box::new(source),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(DOWNLOAD_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .user_agent(concat!("portmon/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(download_error)?;
    response
        .body_mut()
        .with_config()
        .limit(MAX_FILE_BYTES)
        .read_to_vec()
        .map_err(download_error)
}

/// Checks that `body` is IANA's CSV and plausibly whole; returns its record
/// count.
pub fn validate(body: &[u8]) -> Result<usize, UpdateError> {
    let text = String::from_utf8_lossy(body);
    let index = iana_csv::parse(&text).map_err(|source| UpdateError::Invalid { source })?;
    if index.len() < MIN_RECORDS {
        return Err(UpdateError::TooFewRecords {
            records: index.len(),
            min: MIN_RECORDS,
        });
    }
    for (port, transport, name) in ANCHORS {
        if !index.by_port(port, transport).any(|e| e.name == Some(name)) {
            return Err(UpdateError::MissingAnchor {
                port,
                transport,
                name,
            });
        }
    }
    Ok(index.len())
}

/// Replaces `output` with `body` atomically: writes a temporary file in the
/// same directory, fsyncs it, renames it over `output`, fsyncs the
/// directory. On failure the temporary file is removed and `output` is
/// untouched.
pub fn install(body: &[u8], output: &Path) -> Result<(), UpdateError> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| UpdateError::Write { path, source }
    };
    let file_name = output.file_name().ok_or_else(|| UpdateError::Write {
        path: output.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the output path names no file"),
    })?;
    let dir = match output.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(write_error(dir))?;
    // Same directory, so the rename stays within one file system; the pid
    // keeps two concurrent updates from writing one temporary file.
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);

    let written = write_synced(&temp, body).and_then(|()| fs::rename(&temp, output));
    if let Err(source) = written {
        // Best effort: the temporary file may not exist, and the error
        // worth reporting is the one above.
        let _ = fs::remove_file(&temp);
        return Err(UpdateError::Write {
            path: output.to_owned(),
            source,
        });
    }
    // The rename is durable once the directory entry is on disk.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_error(dir))
}

fn write_synced(path: &Path, body: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(body)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_urls_are_refused_before_any_io() {
        for url in ["ftp://example.org/x.csv", "/tmp/x.csv", "file:///tmp/x.csv", ""] {
            assert!(
                matches!(download(url), Err(UpdateError::UnsupportedUrl { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn validate_table() {
        let header = "Service Name,Port Number,Transport Protocol,Description\r\n";
        let anchors = "ssh,22,tcp,SSH\r\ndomain,53,udp,DNS\r\nhttp,80,tcp,HTTP\r\nhttps,443,tcp,HTTPS\r\n";
        let filler = |n: usize| "x,1000,tcp,filler\r\n".repeat(n);
        let whole = format!("{header}{anchors}{}", filler(MIN_RECORDS));
        assert_eq!(validate(whole.as_bytes()).unwrap(), MIN_RECORDS + 4);

        let short = format!("{header}{anchors}{}", filler(10));
        assert!(matches!(
            validate(short.as_bytes()),
            Err(UpdateError::TooFewRecords { records: 14, .. })
        ));
        let no_https = format!("{header}{}", filler(MIN_RECORDS));
        assert!(matches!(
            validate(no_https.as_bytes()),
            Err(UpdateError::MissingAnchor { port: 22, .. })
        ));
        let html = "<!doctype html><html>Not found</html>";
        assert!(matches!(
            validate(html.as_bytes()),
            Err(UpdateError::Invalid { .. })
        ));
        // `/etc/services` is a registry, but not the one this installs.
        assert!(matches!(
            validate(b"ssh 22/tcp\n"),
            Err(UpdateError::Invalid { .. })
        ));
    }

    #[test]
    fn install_replaces_and_creates() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("sub/registry.csv");
        install(b"one", &output).unwrap();
        install(b"two", &output).unwrap();
        assert_eq!(fs::read(&output).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(output.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["registry.csv"], "no temporary file is left");
    }

    #[test]
    fn failed_install_leaves_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails.
        let output = dir.path().join("registry.csv");
        fs::create_dir(&output).unwrap();
        fs::write(output.join("keep"), "old").unwrap();
        assert!(matches!(install(b"new", &output), Err(UpdateError::Write { .. })));
        assert_eq!(fs::read(output.join("keep")).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
