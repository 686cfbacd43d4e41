//! Recordings in S3-compatible object storage (`s3://bucket/prefix`): the objects under a prefix
//! are exactly a recording directory. An upload puts every sealed segment first, each
//! create-only (a retry, or a second upload, finds it there and checks its size: idempotent),
//! and the manifest last: its presence is the commit marker, so a reader never sees a recording
//! whose segments are not all there. Readers fetch a recording into a private local folder and
//! read it from there. Credentials, region and endpoint come from the usual AWS environment
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or
//! `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for another S3 server); requests are retried with
//! backoff.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use object_store::{aws::AmazonS3Builder, path::Path as ObjectPath, ObjectStore, PutMode, PutOptions, PutPayload};

use super::manifest::{Manifest, MANIFEST};

/// Segments larger than this go up in parts.
const MULTIPART_AT: u64 = 16 << 20;
const PART: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("`{0}` is no s3://BUCKET/PREFIX address")]
    Address(String),
    #[error("object storage: {}", short(.0))]
    Store(object_store::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is at {1} with another size ({2} bytes there, {3} here): not overwritten")]
    Conflict(String, String, u64, u64),
    #[error("no recording at {0} (no manifest.json: not uploaded, or its upload did not finish)")]
    NoManifest(String),
    #[error(transparent)]
    Recording(#[from] super::StoreError),
}

impl From<object_store::Error> for RemoteError {
    fn from(e: object_store::Error) -> RemoteError {
        RemoteError::Store(e)
    }
}

/// A recording's place in object storage.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

/// Whether `path` names a recording in object storage.
pub fn is_remote(path: &Path) -> bool {
    path.to_str().is_some_and(|p| p.starts_with("s3://"))
}

impl Remote {
    /// `s3://bucket/prefix`, with the AWS environment (or its shared profile files).
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        Remote::open_at(url, None)
    }

    /// `s3://bucket/prefix` on the S3 server at `endpoint` (plain `http://` allowed), else at
    /// `AWS_ENDPOINT_URL`, the profile's `endpoint_url`, or AWS.
    pub fn open_at(url: &str, endpoint: Option<&str>) -> Result<Remote, RemoteError> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| RemoteError::Address(url.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() || prefix.is_empty() {
            return Err(RemoteError::Address(url.to_owned()));
        }
        // A few quick retries per request; past them the caller's own backoff takes over (the
        // agent keeps the recording spooled), so a storage outage never blocks it for minutes.
        let retry = object_store::RetryConfig {
            backoff: Default::default(),
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(20),
        };
        let client = object_store::ClientOptions::new().with_connect_timeout(std::time::Duration::from_secs(5));
        let mut builder =
            AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry).with_client_options(client);
        let profile = profile::Profile::load();
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            if let (Some(key), Some(secret)) = (&profile.access_key_id, &profile.secret_access_key) {
                builder = builder.with_access_key_id(key).with_secret_access_key(secret);
                if let Some(token) = &profile.session_token {
                    builder = builder.with_token(token);
                }
            }
        }
        let endpoint = endpoint
            .map(str::to_owned)
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| profile.endpoint_url.clone());
        if let Some(endpoint) = endpoint {
            builder = builder.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
        }
        if std::env::var_os("AWS_REGION").is_none() {
            if let Some(region) = std::env::var("AWS_DEFAULT_REGION").ok().or(profile.region) {
                builder = builder.with_region(region);
            }
        }
        Ok(Remote { store: Arc::new(builder.build()?), prefix: ObjectPath::from(prefix), url: url.to_owned() })
    }

    /// The same store, under `relative` below this prefix.
    pub fn child(&self, relative: &str) -> Remote {
        let mut prefix = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            prefix = prefix.child(part);
        }
        Remote { store: self.store.clone(), prefix, url: format!("{}/{}", self.url.trim_end_matches('/'), relative) }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn object(&self, name: &str) -> ObjectPath {
        self.prefix.child(name)
    }

    /// Uploads the recording in `dir`: sealed segments (create-only), then the manifest.
    /// Returns (segments uploaded, segments already there).
    pub fn upload(&self, dir: &Path) -> Result<(usize, usize), RemoteError> {
        let manifest = Manifest::read(dir)?;
        let done = std::collections::HashSet::new();
        let (uploaded, there) = self.upload_segments(dir, &manifest, &done, |_, _| {})?;
        runtime()?.block_on(async {
            // The commit marker: the manifest that lists them, last.
            let text = std::fs::read(dir.join(MANIFEST))
                .map_err(|source| RemoteError::Io { path: dir.join(MANIFEST), source })?;
            self.store.put(&self.object(MANIFEST), PutPayload::from(text)).await?;
            Ok((uploaded.len() - there, there))
        })
    }

    /// Puts the sealed segments `manifest` lists that are not in `done` (create-only), calling
    /// `put` after each (with whether it was put now); returns those put or found there
    /// already, and how many were there.
    /// A recording still being written is uploaded this way as it seals segments.
    pub fn upload_segments(
        &self,
        dir: &Path,
        manifest: &Manifest,
        done: &std::collections::HashSet<String>,
        mut put: impl FnMut(&str, bool),
    ) -> Result<(Vec<String>, usize), RemoteError> {
        runtime()?.block_on(async {
            let (mut uploaded, mut there) = (Vec::new(), 0);
            for segment in manifest.segments.iter().filter(|s| !s.evicted && !done.contains(&s.name)) {
                let path = dir.join(&segment.name);
                let new = self.put_once(&path, &segment.name, segment.bytes).await?;
                if !new {
                    there += 1;
                }
                put(&segment.name, new);
                uploaded.push(segment.name.clone());
            }
            Ok((uploaded, there))
        })
    }

    /// Puts a file unless the object is there already with its size; whether it put it.
    async fn put_once(&self, path: &Path, name: &str, size: u64) -> Result<bool, RemoteError> {
        let object = self.object(name);
        if let Ok(meta) = self.store.head(&object).await {
            if meta.size != size {
                return Err(RemoteError::Conflict(name.to_owned(), self.url.clone(), meta.size, size));
            }
            return Ok(false);
        }
        let io = |source| RemoteError::Io { path: path.to_owned(), source };
        if size >= MULTIPART_AT {
            let mut upload = self.store.put_multipart(&object).await?;
            let mut file = std::fs::File::open(path).map_err(io)?;
            loop {
                let mut part = vec![0u8; PART];
                let n = read_full(&mut file, &mut part).map_err(io)?;
                if n == 0 {
                    break;
                }
                part.truncate(n);
                if let Err(e) = upload.put_part(PutPayload::from(part)).await {
                    let _ = upload.abort().await;
                    return Err(e.into());
                }
            }
            upload.complete().await?;
            return Ok(true);
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&object, PutPayload::from(bytes), options).await {
            Ok(_) => Ok(true),
            // A retry after a put that did land.
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Fetches the recording into `into` (a new private folder): the manifest first, then the
    /// segments it lists.
    pub fn fetch(&self, into: &Path) -> Result<(), RemoteError> {
        runtime()?.block_on(async {
            let manifest = match self.store.get(&self.object(MANIFEST)).await {
                Ok(got) => got.bytes().await?,
                Err(object_store::Error::NotFound { .. }) => return Err(RemoteError::NoManifest(self.url.clone())),
                Err(e) => return Err(e.into()),
            };
            let io = |path: PathBuf| move |source| RemoteError::Io { path, source };
            write_private(&into.join(MANIFEST), &manifest).map_err(io(into.join(MANIFEST)))?;
            let manifest = Manifest::read(into)?;
            for segment in manifest.segments.iter().filter(|s| !s.evicted) {
                let bytes = self.store.get(&self.object(&segment.name)).await?.bytes().await?;
                let path = into.join(&segment.name);
                write_private(&path, &bytes).map_err(io(path.clone()))?;
            }
            Ok(())
        })
    }
}

/// The store's error in one line: the S3 error code and message where the server sent them
/// (`NoSuchBucket: The specified bucket does not exist`), else its first line.
fn short(error: &object_store::Error) -> String {
    let text = error.to_string();
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let from = text.find(&open)? + open.len();
        let to = text[from..].find("</")? + from;
        Some(text[from..to].to_owned())
    };
    let what = match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => text.lines().next().unwrap_or_default().chars().take(200).collect(),
    };
    match text.find("Error performing ").map(|at| &text[at + "Error performing ".len()..]) {
        Some(rest) => format!("{what} ({})", rest.split(" in ").next().unwrap_or_default()),
        None => what,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, RemoteError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| RemoteError::Io { path: PathBuf::from("(tokio runtime)"), source })
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match std::io::Read::read(file, &mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut file, bytes)
}

/// The shared AWS profile files (`~/.aws/credentials`, `~/.aws/config`, or
/// `AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`), profile `AWS_PROFILE` or `default`:
/// credentials, region and endpoint where the environment gives none.
mod profile {
    #[derive(Debug, Default)]
    pub struct Profile {
        pub access_key_id: Option<String>,
        pub secret_access_key: Option<String>,
        pub session_token: Option<String>,
        pub region: Option<String>,
        pub endpoint_url: Option<String>,
    }

    impl Profile {
        pub fn load() -> Profile {
            let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
            let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_default();
            let file = |var: &str, default: &str| {
                std::env::var_os(var).map(std::path::PathBuf::from).unwrap_or_else(|| home.join(".aws").join(default))
            };
            let mut profile = Profile::default();
            // In the config file, profiles other than the default are `[profile NAME]`.
            let config_section = if name == "default" { name.clone() } else { format!("profile {name}") };
            for (path, section) in [
                (file("AWS_CONFIG_FILE", "config"), config_section),
                (file("AWS_SHARED_CREDENTIALS_FILE", "credentials"), name),
            ] {
                let Ok(text) = std::fs::read_to_string(&path) else { continue };
                for (key, value) in section_of(&text, &section) {
                    let slot = match key.as_str() {
                        "aws_access_key_id" => &mut profile.access_key_id,
                        "aws_secret_access_key" => &mut profile.secret_access_key,
                        "aws_session_token" => &mut profile.session_token,
                        "region" => &mut profile.region,
                        "endpoint_url" => &mut profile.endpoint_url,
                        _ => continue,
                    };
                    *slot = Some(value);
                }
            }
            profile
        }
    }

    /// `key = value` lines of `[section]` in an INI text.
    fn section_of(text: &str, section: &str) -> Vec<(String, String)> {
        let mut inside = false;
        let mut pairs = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') && line.ends_with(']') {
                inside = line[1..line.len() - 1].trim() == section;
            } else if inside && !line.starts_with('#') && !line.starts_with(';') {
                if let Some((key, value)) = line.split_once('=') {
                    pairs.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
                }
            }
        }
        pairs
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_named_profile_is_read_from_its_section_only() {
            let text = "[default]\naws_access_key_id = A\n[other]\naws_access_key_id = B\n# x = y\nregion=eu-west-1\n";
            assert_eq!(super::section_of(text, "default"), vec![("aws_access_key_id".into(), "A".into())]);
            assert_eq!(
                super::section_of(text, "other"),
                vec![("aws_access_key_id".into(), "B".into()), ("region".into(), "eu-west-1".into())]
            );
        }
    }
}
