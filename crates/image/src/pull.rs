//! `berth pull`: resolve a reference, choose the platform, and bring in the layers that are
//! missing, several at a time. Each layer is hashed, decompressed and unpacked while it
//! streams in; a download that breaks resumes where it stopped. The image's name appears
//! only after every part is stored and verified.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::config::ImageConfig;
use crate::digest::{Algorithm, Digest, HashingReader};
use crate::manifest::{
    parse_document, select_platform, Compression, Descriptor, Document, Platform,
};
use crate::meta::ImageRecord;
use crate::progress::{Progress, ProgressReader};
use crate::reference::Reference;
use crate::registry::{ClientOptions, RegistryClient};
use crate::store::{now, ImageStore};
use crate::unpack::unpack_layer;
use crate::{Error, Result};

/// Bytes in binary units, one decimal (`96.4 MiB`).
fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// How often a broken layer download is resumed before the pull fails.
const LAYER_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub platform: Option<Platform>,
    pub client: ClientOptions,
    /// Layers transferred at once.
    pub parallel: usize,
    /// Mirrors and per-host settings (`registries.yaml`).
    pub mirrors: Option<std::sync::Arc<crate::mirrors::Registries>>,
}

impl Default for PullOptions {
    fn default() -> PullOptions {
        PullOptions { platform: None, client: ClientOptions::default(), parallel: 6, mirrors: None }
    }
}

/// A manifest as a registry answers it: bytes, declared media type, digest.
type Served = (Vec<u8>, Option<String>, crate::digest::Digest);

/// The first endpoint that serves the manifest: a client of it, the repository there, and
/// the manifest (bytes, media type, digest). Mirrors that fail are passed over for the
/// next (the registry itself last); the error is the last endpoint's, naming the others.
fn first_serving(
    reference: &Reference,
    options: &PullOptions,
) -> Result<(RegistryClient, String, Served)> {
    let Some(mirrors) = options.mirrors.as_ref().filter(|m| !m.is_empty()) else {
        let client = RegistryClient::new(&reference.registry, &options.client);
        let manifest = client.manifest(&reference.repository, &reference.object())?;
        return Ok((client, reference.repository.clone(), manifest));
    };
    let plain = crate::registry::is_loopback(&reference.registry)
        || options.client.insecure.iter().any(|r| r == &reference.registry);
    let mut passed = Vec::new();
    let endpoints = mirrors.endpoints(&reference.registry, &reference.repository, plain);
    let count = endpoints.len();
    for (i, endpoint) in endpoints.into_iter().enumerate() {
        let mut client_options = options.client.clone();
        // Credentials the caller has for the image's registry are for it only; a mirror's
        // come from registries.yaml.
        if !endpoint.upstream || client_options.credentials.is_none() {
            if let Some(credentials) = mirrors.credentials(&endpoint.host) {
                client_options.credentials = Some(credentials);
            } else if !endpoint.upstream {
                client_options.credentials = None;
            }
        }
        let attempt = RegistryClient::at(&endpoint, &client_options, mirrors.tls(&endpoint.host))
            .and_then(|client| {
                let manifest = client.manifest(&endpoint.repository, &reference.object())?;
                Ok((client, endpoint.repository.clone(), manifest))
            });
        match attempt {
            Ok(found) => {
                if !passed.is_empty() {
                    tracing::info!(
                        "{reference}: served by {} after {}",
                        endpoint.base,
                        passed.join("; ")
                    );
                }
                return Ok(found);
            }
            Err(err) if i + 1 < count => {
                tracing::debug!("{reference}: mirror {} failed: {err}", endpoint.base);
                passed.push(format!("{}: {err}", endpoint.base));
            }
            Err(err) => {
                if passed.is_empty() {
                    return Err(err);
                }
                return Err(Error::Registry {
                    registry: reference.registry.clone(),
                    message: format!("{err} (the mirrors failed first: {})", passed.join("; ")),
                });
            }
        }
    }
    Err(Error::Registry { registry: reference.registry.clone(), message: "no endpoint".into() })
}

#[derive(Debug, Clone)]
pub struct Pulled {
    pub reference: Reference,
    pub id: Digest,
    /// The digest the registry knows the image by (the index's, for a multi-platform image).
    pub digest: Digest,
    /// Layers that were downloaded (the others were already here).
    pub downloaded: usize,
}

/// Fetches a small blob (a config) into the store unless it is there.
fn fetch_small(
    store: &ImageStore,
    client: &RegistryClient,
    repository: &str,
    descriptor: &Descriptor,
) -> Result<Vec<u8>> {
    let digest = descriptor.digest()?;
    if store.content.contains(&digest) {
        return store.content.read(&digest);
    }
    let (reader, _) = client.blob(repository, &digest, 0)?;
    let mut data = Vec::new();
    reader.take(descriptor.size + 1).read_to_end(&mut data).map_err(|err| Error::Registry {
        registry: client.registry().to_owned(),
        message: format!("reading {digest}: {err}"),
    })?;
    if data.len() as u64 != descriptor.size {
        return Err(Error::SizeMismatch {
            digest,
            expected: descriptor.size,
            actual: data.len() as u64,
        });
    }
    store.content.put(&data, Some(&digest))?;
    Ok(data)
}

pub fn pull(
    store: &ImageStore,
    reference: &Reference,
    options: &PullOptions,
    progress: &dyn Progress,
) -> Result<Pulled> {
    let _writing = store.writing()?;
    let (client, repository, (bytes, media_type, digest)) = first_serving(reference, options)?;
    let repository = repository.as_str();
    let (document, media_type) =
        parse_document(&bytes, media_type.as_deref(), &digest.to_string())?;
    let pulled_digest = digest.clone();
    let (manifest, manifest_digest, manifest_media_type, index_digest) = match document {
        Document::Manifest(manifest) => {
            store.content.put(&bytes, Some(&digest))?;
            (manifest, digest, media_type, None)
        }
        Document::Index(index) => {
            let wanted = options.platform.clone().unwrap_or_else(Platform::host);
            let chosen = select_platform(&index, &wanted, &reference.to_string())?;
            let chosen_digest = chosen.digest()?;
            let (manifest_bytes, manifest_type, _) =
                client.manifest(repository, &chosen_digest.to_string())?;
            let declared = manifest_type.or_else(|| Some(chosen.media_type.clone()));
            let (document, manifest_media_type) =
                parse_document(&manifest_bytes, declared.as_deref(), &chosen_digest.to_string())?;
            let Document::Manifest(manifest) = document else {
                return Err(Error::Malformed {
                    what: "index",
                    digest: digest.to_string(),
                    reason: "nested indexes are not supported".into(),
                });
            };
            store.content.put(&bytes, Some(&digest))?;
            store.content.put(&manifest_bytes, Some(&chosen_digest))?;
            (manifest, chosen_digest, manifest_media_type, Some(digest))
        }
    };
    let config_digest = manifest.config.digest()?;
    let config_bytes = fetch_small(store, &client, repository, &manifest.config)?;
    let config = ImageConfig::parse(&config_bytes, &config_digest)?;
    let diff_ids = config.diff_ids()?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::Malformed {
            what: "image",
            digest: manifest_digest.to_string(),
            reason: format!(
                "the manifest has {} layers but the config {} diff ids",
                manifest.layers.len(),
                diff_ids.len()
            ),
        });
    }
    // Refuse unknown layer types before transferring anything.
    for layer in &manifest.layers {
        Compression::of_media_type(&layer.media_type)?;
        layer.digest()?;
    }
    let chains = crate::digest::chain_ids(&diff_ids);
    let jobs: Vec<usize> = (0..manifest.layers.len()).collect();
    let next = Mutex::new(jobs.into_iter());
    let failed = AtomicBool::new(false);
    let errors: Mutex<Vec<Error>> = Mutex::new(Vec::new());
    let downloaded = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..options.parallel.max(1).min(manifest.layers.len().max(1)) {
            scope.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let Some(i) = next.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next()
                else {
                    return;
                };
                let layer = &manifest.layers[i];
                match ensure_layer(
                    store,
                    &client,
                    repository,
                    layer,
                    &diff_ids[i],
                    &chains[i],
                    progress,
                ) {
                    Ok(true) => {
                        downloaded.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(err) => {
                        failed.store(true, Ordering::Relaxed);
                        errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(err);
                    }
                }
            });
        }
    });
    if let Some(err) =
        errors.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).into_iter().next()
    {
        if err.is_disk_full() {
            // Say how much the image needs, beside what filled the disk.
            let needed: u64 = manifest.layers.iter().map(|l| l.size).sum();
            return Err(Error::DiskFull {
                needed,
                human: human_bytes(needed),
                source: Box::new(err),
            });
        }
        return Err(err);
    }
    let mut names = Vec::new();
    if reference.tag.is_some() {
        names.push(reference.with_tag(reference.tag.as_deref().unwrap_or("latest")).to_string());
    }
    let record = ImageRecord {
        id: config_digest.clone(),
        manifest: manifest_digest,
        media_type: manifest_media_type,
        index_digest,
        created: now(),
        names,
    };
    let mut sources: Vec<(Digest, String, String)> = manifest
        .layers
        .iter()
        .filter_map(|l| l.digest().ok())
        .map(|d| (d, reference.registry.clone(), reference.repository.clone()))
        .collect();
    sources.push((config_digest.clone(), reference.registry.clone(), reference.repository.clone()));
    store.record(&record, Some((&reference.name(), &pulled_digest)), &sources)?;
    Ok(Pulled {
        reference: reference.clone(),
        id: config_digest,
        digest: pulled_digest,
        downloaded: downloaded.into_inner(),
    })
}

/// Makes sure the blob and the snapshot of one layer are stored. True when it downloaded.
fn ensure_layer(
    store: &ImageStore,
    client: &RegistryClient,
    repository: &str,
    layer: &Descriptor,
    diff_id: &Digest,
    chain_id: &Digest,
    progress: &dyn Progress,
) -> Result<bool> {
    let digest = layer.digest()?;
    let compression = Compression::of_media_type(&layer.media_type)?;
    let have_snapshot = store.snapshot(chain_id)?.is_some();
    if have_snapshot && store.content.contains(&digest) {
        progress.status(&digest, "Already exists");
        return Ok(false);
    }
    let layer_error = |err: Error| Error::Layer {
        digest: digest.to_string(),
        message: err.to_string(),
        source: Some(Box::new(err)),
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut ingest = store.content.ingest(&digest, Some(layer.size))?;
        if ingest.already_stored() {
            drop(ingest);
            if !have_snapshot {
                unpack_stored(store, &digest, compression, diff_id, chain_id)?;
            }
            progress.status(&digest, "Already exists");
            return Ok(false);
        }
        let (stream, honoured) =
            client.blob(repository, &digest, ingest.offset()).map_err(layer_error)?;
        if !honoured {
            ingest.restart()?;
        }
        progress.start(&digest, layer.size, ingest.offset());
        let broken = AtomicBool::new(false);
        let network = NetworkReader { inner: stream, broken: &broken };
        let counted = ProgressReader { inner: network, digest: &digest, progress };
        let mut tee = ingest.resume(counted);
        let outcome: Result<Option<(tempfile::TempDir, Digest, u64)>> = (|| {
            if have_snapshot {
                std::io::copy(&mut tee, &mut std::io::sink()).map_err(|err| Error::Registry {
                    registry: client.registry().to_owned(),
                    message: err.to_string(),
                })?;
                return Ok(None);
            }
            let target = store.temp_dir()?;
            let decoder = compression.decoder(&mut tee).map_err(|err| {
                layer_error(Error::Io { op: "decompress", path: target.path().into(), source: err })
            })?;
            let mut hashing = HashingReader::new(decoder, Algorithm::Sha256);
            let unpacked = unpack_layer(&mut hashing, target.path())?;
            let (actual, _) = hashing.finish().map_err(|err| Error::Io {
                op: "read layer into",
                path: target.path().into(),
                source: err,
            })?;
            Ok(Some((target, actual, unpacked.size)))
        })();
        match outcome {
            Ok(unpacked) => {
                tee.commit().map_err(layer_error)?;
                if let Some((dir, actual, size)) = unpacked {
                    if &actual != diff_id {
                        return Err(layer_error(Error::DigestMismatch {
                            expected: diff_id.clone(),
                            actual,
                            size,
                        }));
                    }
                    store.commit_snapshot(dir, chain_id, diff_id, size)?;
                }
                progress.status(&digest, "Pull complete");
                return Ok(true);
            }
            Err(err) if broken.load(Ordering::Relaxed) && attempt < LAYER_ATTEMPTS => {
                // Keep what arrived; the next attempt asks for the rest.
                drop(tee.keep());
                tracing::info!(layer = %digest, attempt, "download broke off, resuming: {err}");
                progress.status(&digest, "Retrying");
                std::thread::sleep(std::time::Duration::from_millis(300 * u64::from(attempt)));
            }
            Err(err) => {
                if !broken.load(Ordering::Relaxed) {
                    // The data itself is bad: do not resume from it.
                    tee.keep().discard();
                }
                return Err(layer_error(err));
            }
        }
    }
}

/// Unpacks a layer whose blob is already in the content store.
pub(crate) fn unpack_stored(
    store: &ImageStore,
    digest: &Digest,
    compression: Compression,
    diff_id: &Digest,
    chain_id: &Digest,
) -> Result<()> {
    let file = store.content.open_blob(digest)?;
    let target = store.temp_dir()?;
    let path = target.path().to_path_buf();
    let decoder = compression
        .decoder(std::io::BufReader::with_capacity(256 << 10, file))
        .map_err(|err| Error::Io { op: "decompress", path: path.clone(), source: err })?;
    let mut hashing = HashingReader::new(decoder, Algorithm::Sha256);
    let unpacked = unpack_layer(&mut hashing, &path)?;
    let (actual, _) =
        hashing.finish().map_err(|err| Error::Io { op: "read layer into", path, source: err })?;
    if &actual != diff_id {
        return Err(Error::Layer {
            digest: digest.to_string(),
            message: format!("its content is {actual}, but the image config says {diff_id}"),
            source: None,
        });
    }
    store.commit_snapshot(target, chain_id, diff_id, unpacked.size)?;
    Ok(())
}

/// Notes when the network side of a stream failed, so that the caller resumes instead of
/// discarding what arrived.
struct NetworkReader<'a> {
    inner: Box<dyn Read + Send>,
    broken: &'a AtomicBool,
}

impl Read for NetworkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.broken.store(true, Ordering::Relaxed))
    }
}
