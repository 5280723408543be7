//! `berth push`: blobs the registry lacks are mounted from another repository of the same
//! registry when berth knows one that has them, else uploaded; then the manifest is put.
//! The registry ends up with the same manifest digest as the local image.

use crate::progress::Progress;
use crate::reference::Reference;
use crate::registry::{ClientOptions, RegistryClient};
use crate::store::ImageStore;
use crate::{Digest, Error, Result};

#[derive(Debug, Clone)]
pub struct Pushed {
    pub reference: Reference,
    pub digest: Digest,
    pub size: u64,
    pub uploaded: usize,
    pub mounted: usize,
}

/// Pushes the local image `source` to `target` (which names the registry and tag).
pub fn push(
    store: &ImageStore,
    source: &str,
    target: &Reference,
    options: &ClientOptions,
    progress: &dyn Progress,
) -> Result<Pushed> {
    let image = store.resolve(source)?;
    let client = RegistryClient::new(&target.registry, options);
    let repository = target.repository.as_str();
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    for layer in &image.manifest.layers {
        blobs.push((layer.digest()?, layer.size));
    }
    let config = image.manifest.config.digest()?;
    blobs.push((config.clone(), image.manifest.config.size));
    let mut uploaded = 0;
    let mut mounted = 0;
    let mut sources = Vec::new();
    // The config is uploaded like a layer but, as in Docker's output, not shown as one.
    let silent = crate::progress::Silent;
    for (digest, size) in &blobs {
        let progress: &dyn Progress = if *digest == config { &silent } else { progress };
        if client.blob_exists(repository, digest)? {
            progress.status(digest, "Layer already exists");
        } else {
            let from: Vec<String> = store
                .db()
                .blob_sources(digest, &target.registry)?
                .into_iter()
                .filter(|r| r != repository)
                .collect();
            let mut done = false;
            for other in &from {
                if client.mount(repository, digest, other)? {
                    progress.status(digest, &format!("Mounted from {other}"));
                    mounted += 1;
                    done = true;
                    break;
                }
            }
            if !done {
                let path = store.content.path(digest);
                if !path.is_file() {
                    return Err(Error::BlobNotFound { digest: digest.clone() });
                }
                progress.start(digest, *size, 0);
                client.upload(repository, digest, &path, *size)?;
                progress.advance(digest, *size);
                progress.status(digest, "Pushed");
                uploaded += 1;
            }
        }
        sources.push((digest.clone(), target.registry.clone(), target.repository.clone()));
    }
    let manifest_bytes = store.content.read(&image.record.manifest)?;
    let object = target.tag.clone().unwrap_or_else(|| image.record.manifest.to_string());
    let digest =
        client.put_manifest(repository, &object, &image.record.media_type, &manifest_bytes)?;
    let size = manifest_bytes.len() as u64;
    store.db().write(|tx| {
        crate::meta::put_repo_digest(tx, &image.record.id, &target.name(), &digest)?;
        for (blob, registry, repository) in &sources {
            crate::meta::put_blob_source(tx, blob, registry, repository)?;
        }
        Ok(())
    })?;
    Ok(Pushed { reference: target.clone(), digest, size, uploaded, mounted })
}
