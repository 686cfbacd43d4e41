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
    /// `s3://bucket/prefix`, with the AWS environment.
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| RemoteError::Address(url.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() || prefix.is_empty() {
            return Err(RemoteError::Address(url.to_owned()));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            builder = builder.with_allow_http(endpoint.starts_with("http://")).with_endpoint(endpoint);
        }
        if std::env::var_os("AWS_REGION").is_none() {
            if let Ok(region) = std::env::var("AWS_DEFAULT_REGION") {
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
        runtime()?.block_on(async {
            let (mut uploaded, mut there) = (0, 0);
            for segment in &manifest.segments {
                let path = dir.join(&segment.name);
                if self.put_once(&path, &segment.name, segment.bytes).await? {
                    uploaded += 1;
                } else {
                    there += 1;
                }
            }
            // The commit marker: the manifest that lists them, last.
            let text = std::fs::read(dir.join(MANIFEST))
                .map_err(|source| RemoteError::Io { path: dir.join(MANIFEST), source })?;
            self.store.put(&self.object(MANIFEST), PutPayload::from(text)).await?;
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
            for segment in &manifest.segments {
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
