//! age keys: identities (private, for readers) and recipients (public, for the recorder).
//! The recorder only ever holds recipients; the user's default identity lives under the XDG
//! config folder (mode 0600) and is created on first use, with its public half beside it so
//! that `record` never needs to open the private key.

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    str::FromStr as _,
};

use age::secrecy::ExposeSecret as _;

pub use age::x25519::{Identity, Recipient};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("`{value}` is not an age X25519 recipient (it starts with `age1`; `retrace keygen` prints one)")]
    BadRecipient { value: String },
    #[error("`{path}` holds no age X25519 identity (make one with `retrace keygen -o FILE`)")]
    BadIdentity { path: PathBuf },
    #[error("no identity at `{path}`: give --identity FILE (made by `retrace keygen`)")]
    NoIdentity { path: PathBuf },
    #[error("`{path}` already exists: choose another -o (an identity is never overwritten)")]
    Exists { path: PathBuf },
    #[error("cannot find a config folder: set XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    #[error("failed to access `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.to_path_buf(), source }
}

pub fn parse_recipient(value: &str) -> Result<Recipient, KeyError> {
    Recipient::from_str(value.trim()).map_err(|_| KeyError::BadRecipient { value: value.to_owned() })
}

/// Reads an identity file (age format: comments and one `AGE-SECRET-KEY-1…` line).
pub fn read_identity(path: &Path) -> Result<Identity, KeyError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyError::NoIdentity { path: path.to_path_buf() })
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .and_then(|l| Identity::from_str(l).ok())
        .ok_or_else(|| KeyError::BadIdentity { path: path.to_path_buf() })
}

/// Writes a new identity to `path` (mode 0600, never overwriting) and returns its recipient.
/// The file appears whole or not at all (written aside, then hard-linked into place), so a
/// concurrent reader never sees half a key.
pub fn write_new_identity(path: &Path) -> Result<Recipient, KeyError> {
    let identity = Identity::generate();
    let recipient = identity.to_public();
    if path.exists() {
        return Err(KeyError::Exists { path: path.to_path_buf() });
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(identity_file_text(&identity).as_bytes()).and_then(|_| f.sync_all()));
    let linked = written.and_then(|_| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(recipient),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(KeyError::Exists { path: path.to_path_buf() }),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn identity_file_text(identity: &Identity) -> String {
    format!(
        "# retrace identity (age X25519): keep it private\n# public key: {}\n{}\n",
        identity.to_public(),
        identity.to_string().expose_secret()
    )
}

/// The user's key folder: `$XDG_CONFIG_HOME/retrace` or `~/.config/retrace`.
pub fn config_dir() -> Result<PathBuf, KeyError> {
    crate::xdg_retrace_dir("XDG_CONFIG_HOME", ".config").ok_or(KeyError::NoConfigDir)
}

pub fn default_identity_path() -> Result<PathBuf, KeyError> {
    Ok(config_dir()?.join("identity.txt"))
}

/// The default identity's recipient, creating the identity (0600) on first use. Reads only the
/// public file when it exists.
pub fn default_recipient() -> Result<Recipient, KeyError> {
    let dir = config_dir()?;
    let public = dir.join("recipient.txt");
    if let Ok(text) = fs::read_to_string(&public) {
        return parse_recipient(&text);
    }
    let private = dir.join("identity.txt");
    let recipient = match read_identity(&private) {
        Ok(identity) => identity.to_public(),
        Err(KeyError::NoIdentity { .. }) => {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_err(&dir))?;
            match write_new_identity(&private) {
                Ok(r) => r,
                // Another retrace created it first: use that one.
                Err(KeyError::Exists { .. }) => read_identity(&private)?.to_public(),
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    // The public half, so the next `record` does not open the private key. Written whole under
    // a temporary name: a reader never sees half a key.
    let tmp = dir.join(format!(".recipient.{}.tmp", std::process::id()));
    fs::write(&tmp, format!("{recipient}\n")).and_then(|_| fs::rename(&tmp, &public)).map_err(io_err(&public))?;
    Ok(recipient)
}

/// The identity to read with: the one given, else the default one.
pub fn identity_for_reading(given: Option<&Path>) -> Result<Identity, KeyError> {
    match given {
        Some(path) => read_identity(path),
        None => read_identity(&default_identity_path()?),
    }
}
