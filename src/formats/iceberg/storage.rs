//! Iceberg's file IO over `object_store` (the client DataFusion and delta-rs use too, so one
//! storage stack): the warehouse of an Iceberg catalog in S3, GCS or Azure. Files are written
//! through `object_store`'s buffered writer, which turns into a multipart upload once a file
//! outgrows its buffer (a data file streams up as its shard writes it); reads are ranged gets.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::object_store::buffered::BufWriter;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig, StorageFactory};
use iceberg::{Error, ErrorKind};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::storage::{self, StoreSettings};

/// Builds [`ObjectStorage`] for a warehouse at `location` (`s3://bucket/prefix`, ...).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStorageFactory {
    location: String,
    settings: StoreSettings,
}

impl ObjectStorageFactory {
    /// The factory of the warehouse at `location`, reached with `settings` (and the environment).
    pub fn new(location: &str, settings: &StoreSettings) -> Self {
        ObjectStorageFactory { location: location.to_string(), settings: settings.clone() }
    }
}

#[typetag::serde]
impl StorageFactory for ObjectStorageFactory {
    fn build(&self, _: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        let store = storage::object_store(&self.location, &self.settings)
            .map_err(|e| Error::new(ErrorKind::DataInvalid, e.to_string()))?;
        Ok(Arc::new(ObjectStorage { factory: self.clone(), store: Some(store) }))
    }
}

/// Iceberg's [`Storage`] over one bucket of an object store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectStorage {
    factory: ObjectStorageFactory,
    /// Made again from the factory after a round trip through serde.
    #[serde(skip)]
    store: Option<Arc<dyn ObjectStore>>,
}

impl ObjectStorage {
    fn store(&self) -> iceberg::Result<Arc<dyn ObjectStore>> {
        match &self.store {
            Some(store) => Ok(store.clone()),
            None => storage::object_store(&self.factory.location, &self.factory.settings)
                .map_err(|e| Error::new(ErrorKind::DataInvalid, e.to_string())),
        }
    }

    /// The object path of `location`, which must be in the warehouse's bucket.
    fn path(&self, location: &str) -> iceberg::Result<Path> {
        let same_bucket = storage::store_root(location)
            .is_some_and(|root| storage::store_root(&self.factory.location).is_some_and(|warehouse| warehouse == root));
        match (same_bucket, storage::object_path(location)) {
            (true, Some(path)) => Ok(path),
            _ => Err(Error::new(
                ErrorKind::DataInvalid,
                format!("`{location}` is not in the bucket of the warehouse `{}`", self.factory.location),
            )),
        }
    }
}

/// An `object_store` error as Iceberg's, naming the location.
fn failed(location: &str) -> impl FnOnce(datafusion::object_store::Error) -> Error + '_ {
    move |e| {
        let kind = match e {
            datafusion::object_store::Error::NotFound { .. } => ErrorKind::DataInvalid,
            _ => ErrorKind::Unexpected,
        };
        Error::new(kind, format!("{location}: {e}"))
    }
}

#[async_trait::async_trait]
#[typetag::serde]
impl Storage for ObjectStorage {
    async fn exists(&self, location: &str) -> iceberg::Result<bool> {
        match self.store()?.head(&self.path(location)?).await {
            Ok(_) => Ok(true),
            Err(datafusion::object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(failed(location)(e)),
        }
    }

    async fn metadata(&self, location: &str) -> iceberg::Result<FileMetadata> {
        let meta = self.store()?.head(&self.path(location)?).await.map_err(failed(location))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, location: &str) -> iceberg::Result<Bytes> {
        let got = self.store()?.get(&self.path(location)?).await.map_err(failed(location))?;
        got.bytes().await.map_err(failed(location))
    }

    async fn reader(&self, location: &str) -> iceberg::Result<Box<dyn FileRead>> {
        Ok(Box::new(ObjectRead { store: self.store()?, path: self.path(location)?, location: location.to_string() }))
    }

    async fn write(&self, location: &str, bytes: Bytes) -> iceberg::Result<()> {
        self.store()?.put(&self.path(location)?, bytes.into()).await.map_err(failed(location))?;
        Ok(())
    }

    async fn writer(&self, location: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let writer = BufWriter::new(self.store()?, self.path(location)?);
        Ok(Box::new(ObjectWrite { writer, location: location.to_string() }))
    }

    async fn delete(&self, location: &str) -> iceberg::Result<()> {
        match self.store()?.delete(&self.path(location)?).await {
            Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed(location)(e)),
        }
    }

    async fn delete_prefix(&self, location: &str) -> iceberg::Result<()> {
        let path = self.path(location)?;
        storage::delete_objects_under(self.store()?.as_ref(), &path).await.map_err(failed(location))
    }

    async fn delete_stream(&self, mut locations: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(location) = locations.next().await {
            self.delete(&location).await?;
        }
        Ok(())
    }

    fn new_input(&self, location: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), location.to_string()))
    }

    fn new_output(&self, location: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), location.to_string()))
    }
}

/// Ranged reads of one object.
struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    path: Path,
    location: String,
}

#[async_trait::async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store.get_range(&self.path, range).await.map_err(failed(&self.location))
    }
}

/// One object being written: buffered, then a multipart upload once it outgrows the buffer.
struct ObjectWrite {
    writer: BufWriter,
    location: String,
}

#[async_trait::async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bytes: Bytes) -> iceberg::Result<()> {
        self.writer.put(bytes).await.map_err(failed(&self.location))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        self.writer.shutdown().await.map_err(|e| Error::new(ErrorKind::Unexpected, format!("{}: {e}", self.location)))
    }
}
