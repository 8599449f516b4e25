//! Where tables live: a local folder, or a bucket of an object store (S3 and S3-compatible
//! servers, Google Cloud Storage, Azure Blob Storage) reached through `object_store`, the same
//! client DataFusion and delta-rs read and write with.
//!
//! Credentials come from the environment only (each cloud's standard variables and provider
//! chain: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, profiles, instance metadata; the
//! `GOOGLE_*` and `AZURE_*` variables), never from a catalog file, and are never printed. The
//! standard variables alone are enough (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP`, ...);
//! a catalog file's `[storage]` table overrides where the store is and how to reach it.
//! Requests are retried a bounded number of times with short timeouts, so that a wrong endpoint,
//! a missing bucket or bad credentials fail in seconds, not minutes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use datafusion::object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use datafusion::object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use datafusion::object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use datafusion::object_store::path::Path;
use datafusion::object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};
use url::Url;

/// How to reach a catalog's object store, beyond what the environment says (a catalog file's
/// `[storage]` table). Holds no secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// The region (S3), over `AWS_REGION` / `AWS_DEFAULT_REGION`.
    pub region: Option<String>,
    /// The endpoint of an S3-compatible server, over `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`.
    pub endpoint: Option<String>,
    /// Path-style requests (`<endpoint>/<bucket>/<key>`), as most S3-compatible servers want.
    pub path_style: Option<bool>,
    /// Plain HTTP to the endpoint (a server on this machine), over `AWS_ALLOW_HTTP`.
    pub allow_http: Option<bool>,
    /// Unsigned requests (a public bucket), over `AWS_SKIP_SIGNATURE`: no credentials are
    /// looked for.
    pub skip_signature: Option<bool>,
    /// S3 credentials handed over by a program embedding Sluice (from its own secret store),
    /// over the environment's. Never read from or written to a file.
    #[serde(skip)]
    pub credentials: Option<Credentials>,
}

/// An S3 access key, given in code. Its `Debug` shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key id.
    pub key_id: String,
    /// The secret access key.
    pub secret: String,
    /// A session token, for temporary credentials.
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// An object store that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not a URL of a supported store.
    #[error("`{location}`: not a location Sluice can reach (a local folder, s3://, gs://, az:// or abfss://)")]
    Unsupported {
        /// The location given.
        location: String,
    },
    /// The store's client refused its configuration.
    #[error("`{location}`: {message}")]
    Config {
        /// The location given.
        location: String,
        /// What is wrong (never a secret).
        message: String,
    },
}

/// Whether `location` is in an object store (a URL with a scheme other than `file`).
pub fn is_remote(location: &str) -> bool {
    Url::parse(location).is_ok_and(|url| url.scheme() != "file" && url.scheme().len() > 1)
}

/// The object store holding `location` (`s3://bucket/prefix`, `gs://...`, `az://...`,
/// `abfss://...`): configured from the environment, then `settings`.
pub fn object_store(location: &str, settings: &StoreSettings) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let url = Url::parse(location).map_err(|_| StoreError::Unsupported { location: location.to_string() })?;
    let config = |e: datafusion::object_store::Error| StoreError::Config {
        location: location.to_string(),
        message: e.to_string(),
    };
    // A few quick retries: a wrong endpoint or bucket should fail in seconds.
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(20),
    };
    // Timeouts set key by key: the environment's client settings (AWS_ALLOW_HTTP, ...) stay.
    let timeouts = [(ClientConfigKey::ConnectTimeout, "5s"), (ClientConfigKey::Timeout, "60s")];
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" | "s3a" => {
            let mut builder = AmazonS3Builder::from_env().with_url(location).with_retry(retry);
            for (key, value) in timeouts {
                builder = builder.with_config(AmazonS3ConfigKey::Client(key), value);
            }
            if let Some(region) = &settings.region {
                builder = builder.with_region(region);
            }
            if let Some(endpoint) = &settings.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(path_style) = settings.path_style {
                builder = builder.with_virtual_hosted_style_request(!path_style);
            }
            if let Some(allow_http) = settings.allow_http {
                builder = builder.with_allow_http(allow_http);
            }
            if let Some(skip) = settings.skip_signature {
                builder = builder.with_skip_signature(skip);
            }
            if let Some(credentials) = &settings.credentials {
                builder = builder.with_access_key_id(&credentials.key_id).with_secret_access_key(&credentials.secret);
                if let Some(token) = &credentials.token {
                    builder = builder.with_token(token);
                }
            }
            Arc::new(builder.build().map_err(config)?)
        }
        "gs" => {
            let builder = GoogleCloudStorageBuilder::from_env().with_url(location).with_retry(retry);
            let builder = timeouts
                .into_iter()
                .fold(builder, |b, (key, value)| b.with_config(GoogleConfigKey::Client(key), value));
            Arc::new(builder.build().map_err(config)?)
        }
        "az" | "abfs" | "abfss" | "azure" => {
            let builder = MicrosoftAzureBuilder::from_env().with_url(location).with_retry(retry);
            let builder =
                timeouts.into_iter().fold(builder, |b, (key, value)| b.with_config(AzureConfigKey::Client(key), value));
            Arc::new(builder.build().map_err(config)?)
        }
        _ => return Err(StoreError::Unsupported { location: location.to_string() }),
    };
    Ok(store)
}

/// The object path of `location` inside its bucket (`s3://bucket/a/b` → `a/b`).
pub fn object_path(location: &str) -> Option<Path> {
    let url = Url::parse(location).ok()?;
    Path::from_url_path(url.path()).ok()
}

/// The root of `location`'s store: `s3://bucket`, as DataFusion registers stores.
pub fn store_root(location: &str) -> Option<Url> {
    let url = Url::parse(location).ok()?;
    Url::parse(&format!("{}://{}", url.scheme(), url.host_str()?)).ok()
}

/// The folder or bucket prefix a catalog keeps its tables under: every location the catalog
/// places, writes or deletes is checked to lie inside it.
#[derive(Debug, Clone)]
pub enum Root {
    /// A local folder, absolute and normalised.
    Local(std::path::PathBuf),
    /// A prefix of a bucket: `s3://bucket/prefix` (no trailing `/`), and its store.
    Remote {
        /// The prefix's URL.
        url: String,
        /// The store of its bucket.
        store: Arc<dyn ObjectStore>,
    },
}

impl Root {
    /// The prefix at `location` (`s3://bucket/prefix`, ...) of an object store reached with
    /// `settings`; the store is only set up (nothing is requested yet).
    pub fn remote(location: &str, settings: &StoreSettings) -> Result<Self, StoreError> {
        let url = location.trim_end_matches('/').to_string();
        let usable = storage_prefix_ok(&url);
        if !usable {
            return Err(StoreError::Unsupported { location: location.to_string() });
        }
        Ok(Root::Remote { store: object_store(&url, settings)?, url })
    }

    /// The root as users name it: a path, or a URL.
    pub fn display(&self) -> String {
        match self {
            Root::Local(path) => path.display().to_string(),
            Root::Remote { url, .. } => url.clone(),
        }
    }

    /// The local folder, if the root is one.
    pub fn local(&self) -> Option<&std::path::Path> {
        match self {
            Root::Local(path) => Some(path),
            Root::Remote { .. } => None,
        }
    }

    /// The location of `parts` (each one checked name) under the root, as a URL: `file:///...`
    /// or `s3://bucket/prefix/...`.
    pub fn location(&self, parts: &[&str]) -> String {
        match self {
            Root::Local(path) => {
                let path = parts.iter().fold(path.clone(), |path, part| path.join(part));
                format!("file://{}", path.display())
            }
            Root::Remote { url, .. } => format!("{url}/{}", parts.join("/")),
        }
    }

    /// Whether `location` lies strictly inside the root, once normalised.
    pub fn contains(&self, location: &str) -> bool {
        match self {
            Root::Local(path) => crate::paths::local_path(location).is_some_and(|location| {
                crate::paths::is_inside(&path.display().to_string(), &location.display().to_string())
            }),
            Root::Remote { url, .. } => crate::paths::is_inside(url, location),
        }
    }

    /// Whether `location` (a URL in an object store) is the root, lies inside it, or holds it.
    pub fn overlaps(&self, location: &str) -> bool {
        let Root::Remote { url, .. } = self else { return false };
        let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
        same(url, location) || crate::paths::is_inside(url, location) || crate::paths::is_inside(location, url)
    }

    /// Whether `location` is the folder of `parts` under the root (once normalised).
    pub fn is_location_of(&self, location: &str, parts: &[&str]) -> bool {
        let normal = |location: &str| -> Option<std::path::PathBuf> {
            let (scheme, rest) = location.split_once("://").unwrap_or(("file", location));
            let rest = crate::paths::normalize(std::path::Path::new(rest.trim_end_matches('/')))?;
            Some(std::path::Path::new(scheme).join(rest))
        };
        self.contains(location) && normal(location).is_some_and(|l| normal(&self.location(parts)) == Some(l))
    }

    /// Deletes the folder at `location` (inside the root) and everything in it.
    pub async fn delete_folder(&self, location: &str) -> Result<(), String> {
        if !self.contains(location) {
            return Err(format!("{location} is not inside {}", self.display()));
        }
        match self {
            Root::Local(_) => {
                let folder = crate::paths::local_path(location).ok_or_else(|| format!("{location} is not local"))?;
                match std::fs::remove_dir_all(&folder) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("{}: {e}", folder.display())),
                    _ => Ok(()),
                }
            }
            Root::Remote { store, .. } => {
                let path = object_path(location).ok_or_else(|| format!("{location}: not an object path"))?;
                delete_objects_under(store.as_ref(), &path).await.map_err(|e| format!("{location}: {e}"))
            }
        }
    }
}

/// Checks that `store` honours conditional puts (`If-None-Match: *`), which safe concurrent
/// commits need (a Delta log version is taken by creating its object): creates a probe object
/// at `probe` twice, the second of which must be refused, then deletes it. A store that accepts
/// both (or cannot be asked) would let two commits overwrite each other: an error says so.
pub async fn check_conditional_put(store: &dyn ObjectStore, probe: &Path) -> Result<(), String> {
    use datafusion::object_store::{ObjectStoreExt, PutMode, PutOptions};
    let create = || async {
        let options = PutOptions { mode: PutMode::Create, ..Default::default() };
        store.put_opts(probe, bytes::Bytes::from_static(b"probe").into(), options).await
    };
    let unsafe_store = |why: String| {
        format!(
            "the store does not enforce conditional writes (If-None-Match), so two commits could overwrite \
             each other; refused ({why}). Use a store that supports them (AWS S3, MinIO, R2, ...)"
        )
    };
    create().await.map_err(|e| unsafe_store(format!("a first create of {probe}: {e}")))?;
    let second = create().await;
    if let Err(e) = store.delete(probe).await {
        tracing::warn!("deleting the probe object {probe}: {e}");
    }
    match second {
        Err(datafusion::object_store::Error::AlreadyExists { .. }) => Ok(()),
        Ok(_) => Err(unsafe_store(format!("a second create of {probe} replaced the first"))),
        Err(e) => Err(unsafe_store(format!("a second create of {probe}: {e}"))),
    }
}

/// Deletes every file in the folder `folder` (a path or `file://` URL; with `store`, a URL in
/// its bucket), at any depth, whose name starts with `prefix` and is not in `keep`; returns how
/// many it deleted.
pub async fn delete_files_named(
    folder: &str,
    prefix: &str,
    keep: &HashSet<String>,
    store: Option<&dyn ObjectStore>,
) -> Result<usize, String> {
    use datafusion::object_store::ObjectStoreExt;
    use futures::TryStreamExt;
    let named = |name: &str| name.starts_with(prefix) && !keep.contains(name);
    let Some(store) = store else {
        let root = crate::paths::local_path(folder).ok_or_else(|| format!("{folder}: not a local folder"))?;
        let mut deleted = 0;
        let mut folders = vec![root];
        while let Some(dir) = folders.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("{}: {e}", dir.display())),
            };
            for entry in entries {
                let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
                let kind = entry.file_type().map_err(|e| format!("{}: {e}", entry.path().display()))?;
                if kind.is_dir() {
                    folders.push(entry.path());
                } else if kind.is_file() && named(&entry.file_name().to_string_lossy()) {
                    std::fs::remove_file(entry.path()).map_err(|e| format!("{}: {e}", entry.path().display()))?;
                    deleted += 1;
                }
            }
        }
        return Ok(deleted);
    };
    let folder_path = object_path(folder).ok_or_else(|| format!("{folder}: not an object path"))?;
    let listed: Vec<_> = store.list(Some(&folder_path)).try_collect().await.map_err(|e| format!("{folder}: {e}"))?;
    let mut deleted = 0;
    for object in listed.iter().filter(|o| o.location.filename().is_some_and(named)) {
        match store.delete(&object.location).await {
            Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => deleted += 1,
            Err(e) => return Err(format!("{}: {e}", object.location)),
        }
    }
    Ok(deleted)
}

/// Deletes every object in the folder `path` of `store`: `t/...`, never `t2/...`.
pub async fn delete_objects_under(store: &dyn ObjectStore, path: &Path) -> Result<(), datafusion::object_store::Error> {
    use futures::StreamExt;
    let prefix = Path::from(format!("{}/", path.as_ref().trim_end_matches('/')));
    let listed = store.list(Some(&prefix)).map(|meta| meta.map(|m| m.location)).boxed();
    let mut deleted = store.delete_stream(listed);
    while let Some(result) = deleted.next().await {
        match result {
            Ok(_) | Err(datafusion::object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `url` names a bucket and a prefix with no `.` or `..` segment (as written: a URL
/// parser would resolve them away).
fn storage_prefix_ok(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else { return false };
    let mut segments = rest.split('/');
    let bucket = segments.next().unwrap_or_default();
    is_remote(url) && !bucket.is_empty() && bucket != "." && bucket != ".." && segments.all(|s| s != "." && s != "..")
}

/// DataFusion's object stores: its own (local files, stores registered for the catalogs'
/// buckets), and for any other `s3://`, `gs://`, `az://` or `abfss://` URL a store configured
/// from the environment, made on first use (`SELECT * FROM 's3://bucket/file.parquet'`,
/// `COPY ... TO 's3://bucket/out/'`).
#[derive(Debug, Default)]
pub struct StoreRegistry {
    stores: datafusion::execution::object_store::DefaultObjectStoreRegistry,
}

impl datafusion::execution::object_store::ObjectStoreRegistry for StoreRegistry {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.stores.register_store(url, store)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.stores.get_store(url) {
            return Ok(store);
        }
        let root = store_root(url.as_str())
            .ok_or_else(|| datafusion::error::DataFusionError::Plan(format!("`{url}`: no bucket")))?;
        let store = object_store(root.as_str(), &StoreSettings::default())
            .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
        self.stores.register_store(&root, store.clone());
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_their_secret() {
        let credentials = Credentials { key_id: "AKIA123".into(), secret: "s3cr3t".into(), token: Some("t0k".into()) };
        let shown = format!("{:?}", StoreSettings { credentials: Some(credentials), ..Default::default() });
        assert!(shown.contains("AKIA123") && !shown.contains("s3cr3t") && !shown.contains("t0k"), "{shown}");
    }

    #[test]
    fn a_root_in_a_bucket_holds_only_what_lies_under_its_prefix() {
        let root = Root::remote("s3://lake/warehouse/", &StoreSettings::default()).unwrap();
        assert_eq!(root.location(&["sales", "orders"]), "s3://lake/warehouse/sales/orders");
        assert!(root.contains("s3://lake/warehouse/sales/orders/data/x.parquet"));
        for outside in
            ["s3://lake/warehouse2/t", "s3://other/warehouse/t", "s3://lake/warehouse/../t", "gs://lake/warehouse/t"]
        {
            assert!(!root.contains(outside), "{outside}");
        }
        assert!(root.is_location_of("s3://lake/warehouse/sales/orders/", &["sales", "orders"]));
        assert!(!root.is_location_of("s3://lake/warehouse/sales/orders2", &["sales", "orders"]));
        assert!(Root::remote("s3://lake/../x", &StoreSettings::default()).is_err());
        assert!(Root::remote("ftp://host/x", &StoreSettings::default()).is_err());
    }
}
