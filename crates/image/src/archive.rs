//! Image archives: `save` writes one tar that is both an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/`) and a Docker archive (`manifest.json` pointing into `blobs/`),
//! as Docker 25 does; `load` reads OCI layouts and Docker archives of every generation
//! that has a `manifest.json`; `import` makes a one-layer image from a plain rootfs tar.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{rfc3339, History, ImageConfig, RootFs, RunConfig};
use crate::diff::{create_image, store_layer};
use crate::digest::{Algorithm, Digest, HashingReader};
use crate::error::io;
use crate::manifest::{
    media, parse_document, select_platform, Compression, Descriptor, Document, Index, Manifest,
    Platform,
};
use crate::meta::ImageRecord;
use crate::pull::unpack_stored;
use crate::reference::Reference;
use crate::store::{now, ImageStore};
use crate::unpack::entry_components;
use crate::{Error, Result};

const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// One entry of Docker's `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().name(), digest.hex())
}

fn append_bytes<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    builder.append_data(&mut header, path, data)
}

/// `berth save`: writes the images `names` to `out`.
pub fn save<W: Write>(store: &ImageStore, names: &[String], out: W) -> Result<W> {
    let failed = |err| Error::Io { op: "write", path: PathBuf::from("the archive"), source: err };
    let mut builder = tar::Builder::new(out);
    let mut written = std::collections::HashSet::new();
    let mut index = Index {
        schema_version: 2,
        media_type: Some(media::OCI_INDEX.into()),
        manifests: Vec::new(),
        annotations: None,
    };
    let mut docker: Vec<DockerEntry> = Vec::new();
    for dir in ["blobs", "blobs/sha256"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(0);
        builder.append_data(&mut header, dir, std::io::empty()).map_err(failed)?;
    }
    for name in names {
        let image = store.resolve(name)?;
        let mut blobs: Vec<Digest> = vec![image.record.manifest.clone(), image.record.id.clone()];
        for layer in &image.manifest.layers {
            blobs.push(layer.digest()?);
        }
        for digest in &blobs {
            if !written.insert(digest.clone()) {
                continue;
            }
            let path = store.content.path(digest);
            let file = store.content.open_blob(digest)?;
            let size = file.metadata().map_err(io("stat", &path))?.len();
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(size);
            header.set_mtime(0);
            builder.append_data(&mut header, blob_path(digest), file).map_err(failed)?;
        }
        let manifest_size = store.content.size(&image.record.manifest).unwrap_or(0);
        // Which names to write: the one asked for when it is a name, else all of them.
        let requested = name
            .parse::<Reference>()
            .ok()
            .map(|r| r.to_string())
            .filter(|n| image.record.names.contains(n));
        let image_names: Vec<String> = match requested {
            Some(n) => vec![n],
            None => image.record.names.clone(),
        };
        let mut descriptor =
            Descriptor::new(&image.record.media_type, &image.record.manifest, manifest_size);
        if image_names.is_empty() {
            index.manifests.push(descriptor.clone());
        }
        for full in &image_names {
            let mut annotations = BTreeMap::new();
            annotations.insert(IMAGE_NAME_ANNOTATION.to_owned(), full.clone());
            if let Some(tag) = full.parse::<Reference>().ok().and_then(|r| r.tag) {
                annotations.insert(REF_NAME_ANNOTATION.to_owned(), tag);
            }
            descriptor.annotations = Some(annotations);
            index.manifests.push(descriptor.clone());
        }
        docker.push(DockerEntry {
            config: blob_path(&image.record.id),
            repo_tags: Some(
                image_names
                    .iter()
                    .map(|n| {
                        n.parse::<Reference>().map(|r| r.familiar()).unwrap_or_else(|_| n.clone())
                    })
                    .collect(),
            ),
            layers: image
                .manifest
                .layers
                .iter()
                .filter_map(|l| l.digest().ok())
                .map(|d| blob_path(&d))
                .collect(),
        });
    }
    append_bytes(&mut builder, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(failed)?;
    append_bytes(&mut builder, "index.json", &serde_json::to_vec(&index).unwrap_or_default())
        .map_err(failed)?;
    append_bytes(&mut builder, "manifest.json", &serde_json::to_vec(&docker).unwrap_or_default())
        .map_err(failed)?;
    builder.into_inner().map_err(failed)
}

/// Extracts the regular files and directories of an archive into `dir` (nothing else:
/// an archive's symlinks are never followed or created).
fn extract(input: impl Read, dir: &Path, shown: &Path) -> Result<()> {
    let mut head = std::io::BufReader::with_capacity(256 << 10, input);
    let compression = {
        use std::io::BufRead;
        Compression::sniff(head.fill_buf().map_err(io("read", shown))?)
    };
    let reader = compression.decoder(head).map_err(io("decompress", shown))?;
    let mut archive = tar::Archive::new(reader);
    let bad = |reason: String| Error::Archive { path: shown.to_path_buf(), reason };
    let mut any = false;
    for entry in archive.entries().map_err(|e| bad(format!("not a tar archive: {e}")))? {
        let mut entry = entry.map_err(|e| bad(format!("not a tar archive: {e}")))?;
        any = true;
        let components = entry_components(&entry.path_bytes())?;
        if components.is_empty() {
            continue;
        }
        let path: PathBuf = components.iter().collect();
        let target = dir.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(io("create", &target))?
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
                }
                // create_new: a second entry of the same name, or a planted link, fails.
                let _ = std::fs::remove_file(&target);
                let mut file = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(io("create", &target))?;
                std::io::copy(&mut entry, &mut file)
                    .map_err(|e| bad(format!("reading {}: {e}", path.display())))?;
            }
            _ => {}
        }
    }
    if !any {
        return Err(bad("empty archive (is it an image archive?)".into()));
    }
    Ok(())
}

/// Copies a file of the extracted archive into the content store, checking it against
/// `expected` when the archive names its digest.
fn import_blob(
    store: &ImageStore,
    path: &Path,
    expected: Option<&Digest>,
) -> Result<(Digest, u64)> {
    let file = File::open(path).map_err(io("open", path))?;
    let size = file.metadata().map_err(io("stat", path))?.len();
    let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
    let mut hashing = HashingReader::new(file, algorithm);
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io("read", path))?;
    let (digest, _) = hashing.finish().map_err(io("read", path))?;
    if let Some(expected) = expected {
        if &digest != expected {
            return Err(Error::DigestMismatch { expected: expected.clone(), actual: digest, size });
        }
    }
    if !store.content.contains(&digest) {
        let mut ingest = store.content.ingest(&digest, Some(size))?;
        if !ingest.already_stored() {
            ingest.restart()?;
            let mut file = File::open(path).map_err(io("open", path))?;
            std::io::copy(&mut file, &mut ingest).map_err(io("store", path))?;
            ingest.commit()?;
        }
    }
    Ok((digest, size))
}

/// What `load` brought in: an image id with the names it got.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub id: Digest,
    pub names: Vec<String>,
}

/// `berth load`: reads an image archive from `input` (`shown` names it in errors).
pub fn load(
    store: &ImageStore,
    input: impl Read,
    shown: &Path,
    platform: Option<&Platform>,
) -> Result<Vec<Loaded>> {
    let _writing = store.writing()?;
    let work = store.temp_dir()?;
    extract(input, work.path(), shown)?;
    let dir = work.path();
    let bad = |reason: String| Error::Archive { path: shown.to_path_buf(), reason };
    let docker_entries: Option<Vec<DockerEntry>> = match std::fs::read(dir.join("manifest.json")) {
        Ok(data) => Some(
            serde_json::from_slice(&data)
                .map_err(|e| bad(format!("malformed manifest.json: {e}")))?,
        ),
        Err(_) => None,
    };
    if dir.join("index.json").is_file() {
        return load_oci(store, dir, shown, platform, docker_entries.as_deref());
    }
    match docker_entries {
        Some(entries) => load_docker(store, dir, shown, &entries),
        None if dir.join("repositories").is_file() => Err(bad(
            "a Docker archive from before Docker 1.10 (no manifest.json); save it again with a newer Docker, or as an OCI layout".into(),
        )),
        None => Err(bad("neither an OCI layout (index.json) nor a Docker archive (manifest.json)".into())),
    }
}

fn load_oci(
    store: &ImageStore,
    dir: &Path,
    shown: &Path,
    platform: Option<&Platform>,
    docker: Option<&[DockerEntry]>,
) -> Result<Vec<Loaded>> {
    let bad = |reason: String| Error::Archive { path: shown.to_path_buf(), reason };
    let index_bytes = std::fs::read(dir.join("index.json")).map_err(io("read", shown))?;
    let index: Index = serde_json::from_slice(&index_bytes)
        .map_err(|e| bad(format!("malformed index.json: {e}")))?;
    let wanted = platform.cloned().unwrap_or_else(Platform::host);
    let mut loaded: Vec<Loaded> = Vec::new();
    for top in &index.manifests {
        let top_digest = top.digest()?;
        let path = dir.join(blob_path(&top_digest));
        if !path.is_file() {
            return Err(bad(format!("index.json names {top_digest}, which the archive lacks")));
        }
        let (digest, _) = import_blob(store, &path, Some(&top_digest))?;
        let bytes = store.content.read(&digest)?;
        let (document, media_type) =
            parse_document(&bytes, Some(&top.media_type), &digest.to_string())?;
        let (manifest, manifest_digest, media_type, index_digest) = match document {
            Document::Manifest(manifest) => (manifest, digest, media_type, None),
            Document::Index(inner) => {
                let chosen =
                    select_platform(&inner, &wanted, &shown.display().to_string())?.clone();
                let chosen_digest = chosen.digest()?;
                let path = dir.join(blob_path(&chosen_digest));
                let (chosen_digest, _) = import_blob(store, &path, Some(&chosen_digest))?;
                let bytes = store.content.read(&chosen_digest)?;
                match parse_document(&bytes, Some(&chosen.media_type), &chosen_digest.to_string())?
                {
                    (Document::Manifest(manifest), media_type) => {
                        (manifest, chosen_digest, media_type, Some(digest))
                    }
                    _ => return Err(bad("nested indexes are not supported".into())),
                }
            }
        };
        let config_digest = manifest.config.digest()?;
        import_blob(store, &dir.join(blob_path(&config_digest)), Some(&config_digest))?;
        let mut names = Vec::new();
        let annotations = top.annotations.clone().unwrap_or_default();
        if let Some(name) =
            annotations.get(IMAGE_NAME_ANNOTATION).and_then(|n| n.parse::<Reference>().ok())
        {
            names.push(name.to_string());
        } else if let Some(name) = annotations
            .get(REF_NAME_ANNOTATION)
            .and_then(|n| n.parse::<Reference>().ok())
            .filter(|_| annotations[REF_NAME_ANNOTATION].contains('/'))
        {
            names.push(name.to_string());
        } else if let Some(entries) = docker {
            let config_path = blob_path(&config_digest);
            for entry in entries.iter().filter(|e| e.config == config_path) {
                for tag in entry.repo_tags.iter().flatten() {
                    if let Ok(reference) = tag.parse::<Reference>() {
                        names.push(reference.to_string());
                    }
                }
            }
        }
        finish_image(
            store,
            dir,
            shown,
            &manifest,
            &manifest_digest,
            &media_type,
            index_digest,
            names.clone(),
        )?;
        match loaded.iter_mut().find(|l| l.id == config_digest) {
            Some(existing) => existing.names.extend(names),
            None => loaded.push(Loaded { id: config_digest, names }),
        }
    }
    Ok(loaded)
}

/// Imports an image's layers, unpacks them, and records it.
#[allow(clippy::too_many_arguments)]
fn finish_image(
    store: &ImageStore,
    dir: &Path,
    shown: &Path,
    manifest: &Manifest,
    manifest_digest: &Digest,
    media_type: &str,
    index_digest: Option<Digest>,
    names: Vec<String>,
) -> Result<()> {
    let config_digest = manifest.config.digest()?;
    let config = ImageConfig::parse(&store.content.read(&config_digest)?, &config_digest)?;
    let diff_ids = config.diff_ids()?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::Archive {
            path: shown.to_path_buf(),
            reason: format!(
                "image {} has {} layers but {} diff ids",
                config_digest.short(),
                manifest.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let chains = crate::digest::chain_ids(&diff_ids);
    for (i, layer) in manifest.layers.iter().enumerate() {
        let digest = layer.digest()?;
        if !store.content.contains(&digest) {
            let path = dir.join(blob_path(&digest));
            if !path.is_file() {
                return Err(Error::Archive {
                    path: shown.to_path_buf(),
                    reason: format!("layer {digest} is missing from the archive"),
                });
            }
            import_blob(store, &path, Some(&digest))?;
        }
        if store.snapshot(&chains[i])?.is_none() {
            let compression = Compression::of_media_type(&layer.media_type)?;
            unpack_stored(store, &digest, compression, &diff_ids[i], &chains[i])?;
        }
    }
    let record = ImageRecord {
        id: config_digest,
        manifest: manifest_digest.clone(),
        media_type: media_type.to_owned(),
        index_digest,
        created: now(),
        names,
    };
    store.record(&record, None, &[])
}

fn load_docker(
    store: &ImageStore,
    dir: &Path,
    shown: &Path,
    entries: &[DockerEntry],
) -> Result<Vec<Loaded>> {
    let bad = |reason: String| Error::Archive { path: shown.to_path_buf(), reason };
    let mut loaded = Vec::new();
    for entry in entries {
        let inside = |name: &str| -> Result<PathBuf> {
            let components = entry_components(name.as_bytes())?;
            let path = dir.join(components.iter().collect::<PathBuf>());
            if path.is_file() {
                Ok(path)
            } else {
                Err(bad(format!("manifest.json names {name}, which the archive lacks")))
            }
        };
        let (config_digest, config_size) = import_blob(store, &inside(&entry.config)?, None)?;
        let config = ImageConfig::parse(&store.content.read(&config_digest)?, &config_digest)?;
        let diff_ids = config.diff_ids()?;
        if diff_ids.len() != entry.layers.len() {
            return Err(bad(format!(
                "image {} has {} layers but {} diff ids",
                config_digest.short(),
                entry.layers.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let path = inside(layer)?;
            let mut head = [0u8; 4];
            let n =
                File::open(&path).and_then(|mut f| f.read(&mut head)).map_err(io("read", &path))?;
            let media_type = match Compression::sniff(&head[..n]) {
                Compression::None => media::OCI_LAYER,
                Compression::Gzip => media::OCI_LAYER_GZIP,
                Compression::Zstd => media::OCI_LAYER_ZSTD,
            };
            let (digest, size) = import_blob(store, &path, None)?;
            layers.push(Descriptor::new(media_type, &digest, size));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            config: Descriptor::new(media::OCI_CONFIG, &config_digest, config_size),
            layers,
            annotations: None,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
        let manifest_digest = store.content.put(&manifest_bytes, None)?;
        let names: Vec<String> = entry
            .repo_tags
            .iter()
            .flatten()
            .filter_map(|t| t.parse::<Reference>().ok())
            .map(|r| r.to_string())
            .collect();
        finish_image(
            store,
            dir,
            shown,
            &manifest,
            &manifest_digest,
            media::OCI_MANIFEST,
            None,
            names.clone(),
        )?;
        loaded.push(Loaded { id: config_digest, names });
    }
    Ok(loaded)
}

/// `berth import`: a plain rootfs tar (compressed or not) as a one-layer image.
pub fn import(
    store: &ImageStore,
    input: impl Read,
    shown: &str,
    run: Option<RunConfig>,
    name: Option<&Reference>,
) -> Result<Digest> {
    let _writing = store.writing()?;
    let mut head = std::io::BufReader::with_capacity(256 << 10, input);
    let compression = {
        use std::io::BufRead;
        Compression::sniff(head.fill_buf().map_err(io("read", shown))?)
    };
    let mut reader = compression.decoder(head).map_err(io("decompress", shown))?;
    let layer = store_layer(store, |out| {
        std::io::copy(&mut reader, out).map_err(io("read", shown))?;
        Ok(())
    })?;
    let platform = Platform::host();
    let config = ImageConfig {
        created: Some(rfc3339(std::time::SystemTime::now())),
        architecture: platform.architecture,
        os: platform.os,
        variant: platform.variant,
        config: Some(run.unwrap_or_default()),
        rootfs: RootFs { kind: "layers".into(), diff_ids: Vec::new() },
        ..ImageConfig::default()
    };
    let history = History {
        created: config.created.clone(),
        created_by: Some("berth import".into()),
        comment: Some(format!("imported from {shown}")),
        ..History::default()
    };
    let names = name.map(|n| vec![n.to_string()]).unwrap_or_default();
    // A tar that is not one fails here, when it is unpacked.
    create_image(store, None, config, vec![(layer, history)], names)
}
