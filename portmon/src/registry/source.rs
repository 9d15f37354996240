//! Which registry file to read, and in which format.

use std::{
    fs::File,
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use super::{iana_csv::HEADER, RegistryError};

/// Where `portmon registry update` installs IANA's CSV, and where
/// [`super::Registry::load`] looks for it first.
pub const DEFAULT_IANA_PATH: &str = "/var/lib/portmon/service-names-port-numbers.csv";

/// The host's services file, read when no IANA CSV is installed.
pub const ETC_SERVICES_PATH: &str = "/etc/services";

/// Largest registry file read: IANA's CSV is about 1.2 MB, so this leaves
/// room for decades of growth while refusing to slurp a wrong path such as
/// a disk image.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// A registry file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// IANA's `service-names-port-numbers.csv`.
    IanaCsv,
    /// services(5), as in `/etc/services`.
    EtcServices,
}

impl Format {
    /// The label used in logs, metrics (`portmon_registry_entries{source}`)
    /// and JSON.
    pub const fn label(self) -> &'static str {
        match self {
            Format::IanaCsv => "iana",
            Format::EtcServices => "services",
        }
    }
}

portmon_common::label_text!(Format);

/// Where a loaded registry came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Source {
    /// The file read (empty for [`super::Registry::empty`]).
    pub path: PathBuf,
    /// Its format, detected from its content.
    pub format: Format,
    /// Records read: CSV data rows or services lines, including
    /// `Reserved`/`Unassigned` rows and names without a port.
    pub entries: usize,
}

/// The format of registry text: IANA's CSV if its first non-blank line
/// starts with IANA's header (`Service Name,Port Number,…`), else
/// `/etc/services` (whose parser then reports the first line that is not).
pub fn detect_format(text: &str) -> Format {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let prefix = format!("{},{},", HEADER[0], HEADER[1]);
    if first.starts_with(&prefix) {
        Format::IanaCsv
    } else {
        Format::EtcServices
    }
}

/// Picks the file to read: `explicit`, else `iana_default` if it exists,
/// else `services_default` if it exists.
pub(super) fn choose(
    explicit: Option<&Path>,
    iana_default: &Path,
    services_default: &Path,
) -> Result<PathBuf, RegistryError> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    for path in [iana_default, services_default] {
        // A file that exists but cannot be read is reported when read, rather
        // than silently passed over for the next one.
        match path.try_exists() {
            Ok(true) => return Ok(path.to_owned()),
            Ok(false) => {}
            Err(source) => {
                return Err(RegistryError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
    Err(RegistryError::NoRegistry {
        iana: iana_default.to_owned(),
        services: services_default.to_owned(),
    })
}

/// Reads a registry file, refusing ones over [`MAX_FILE_BYTES`]. Bytes
/// that are not UTF-8 (a Latin-1 comment in an old services file) become
/// U+FFFD rather than failing the whole file.
pub(super) fn read(path: &Path) -> Result<String, RegistryError> {
    let read_error = |source: io::Error| RegistryError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let too_large = || RegistryError::TooLarge {
        path: path.to_owned(),
        limit: MAX_FILE_BYTES,
    };
    // The length check spares reading a huge regular file; `take` bounds
    // the rest (pipes, /proc files that report length 0).
    if file.metadata().map_err(read_error)?.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_format_table() {
        let cases = [
            (
                "Service Name,Port Number,Transport Protocol,Description\r\n",
                Format::IanaCsv,
            ),
            (
                "\u{feff}Service Name,Port Number,Transport Protocol\n",
                Format::IanaCsv,
            ),
            ("\n\r\nService Name,Port Number,x\n", Format::IanaCsv),
            ("# Network services\nssh 22/tcp\n", Format::EtcServices),
            ("ssh 22/tcp\n", Format::EtcServices),
            ("Service Name Port Number\n", Format::EtcServices),
            ("", Format::EtcServices),
        ];
        for (text, format) in cases {
            assert_eq!(detect_format(text), format, "{text:?}");
        }
    }

    #[test]
    fn choose_follows_the_documented_order() {
        let dir = tempfile::tempdir().unwrap();
        let iana = dir.path().join("iana.csv");
        let services = dir.path().join("services");
        let explicit = dir.path().join("mine");
        let pick = |explicit: Option<&Path>| choose(explicit, &iana, &services);

        assert!(matches!(pick(None), Err(RegistryError::NoRegistry { .. })));
        std::fs::write(&services, "").unwrap();
        assert_eq!(pick(None).unwrap(), services);
        std::fs::write(&iana, "").unwrap();
        assert_eq!(pick(None).unwrap(), iana);
        // An explicit path wins even before it exists (reading it then fails).
        assert_eq!(pick(Some(&explicit)).unwrap(), explicit);
    }

    #[test]
    fn read_refuses_huge_files_and_repairs_bad_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let latin1 = dir.path().join("services");
        std::fs::write(&latin1, b"ssh 22/tcp # caf\xe9\n").unwrap();
        assert_eq!(read(&latin1).unwrap(), "ssh 22/tcp # caf\u{fffd}\n");

        let huge = dir.path().join("huge");
        File::create(&huge).unwrap().set_len(MAX_FILE_BYTES + 1).unwrap();
        assert!(matches!(read(&huge), Err(RegistryError::TooLarge { .. })));
        assert!(matches!(
            read(&dir.path().join("missing")),
            Err(RegistryError::Read { .. })
        ));
    }
}
