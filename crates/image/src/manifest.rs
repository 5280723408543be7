//! Manifests, indexes and descriptors, in both the OCI and the Docker schema 2 dialects.
//!
//! These are read from registries and archives and kept byte for byte in the content
//! store (their digest is their identity), so the types here are only a view: unknown
//! fields are ignored, and only documents berth writes itself are serialized from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::{Error, Result};

pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";

    /// What a registry is asked for when resolving a reference.
    pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From a layer media type; foreign (non-distributable) variants count too.
    pub fn of_media_type(media_type: &str) -> Result<Compression> {
        let unsupported =
            || Error::UnsupportedMediaType { media_type: media_type.to_owned(), what: "a layer" };
        let base = media_type.replace(".nondistributable", "").replace(
            "application/vnd.docker.image.rootfs.foreign.diff",
            "application/vnd.docker.image.rootfs.diff",
        );
        match base.as_str() {
            media::OCI_LAYER | "application/vnd.docker.image.rootfs.diff.tar" => {
                Ok(Compression::None)
            }
            media::OCI_LAYER_GZIP
            | media::DOCKER_LAYER_GZIP
            | "application/vnd.oci.image.layer.v1.tar+gzip+encrypted" => {
                if base.ends_with("encrypted") {
                    Err(unsupported())
                } else {
                    Ok(Compression::Gzip)
                }
            }
            media::OCI_LAYER_ZSTD | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
                Ok(Compression::Zstd)
            }
            _ => Err(unsupported()),
        }
    }

    /// From the first bytes of a stream (archives do not always say).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// A reader of the uncompressed tar.
    pub fn decoder<'a, R: std::io::Read + 'a>(
        self,
        reader: R,
    ) -> std::io::Result<Box<dyn std::io::Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
                std::io::BufReader::with_capacity(256 << 10, reader),
            )),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: &Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_string(),
            size,
            platform: None,
            annotations: None,
            urls: None,
        }
    }

    pub fn digest(&self) -> Result<Digest> {
        self.digest.parse()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

impl Platform {
    /// The machine berth runs on, in OCI's names.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: variant.map(Into::into),
            os_version: None,
        }
    }

    /// `linux/arm64/v8`.
    pub fn parse(text: &str) -> Result<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: None,
                os_version: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: (*os).into(),
                    architecture: (*arch).into(),
                    variant: Some((*variant).into()),
                    os_version: None,
                })
            }
            _ => Err(Error::BadPlatform { platform: text.to_owned() }),
        }
    }

    /// Whether an image built for `self` is what `wanted` asks for; a wanted variant must
    /// match, a missing one accepts any (arm64 images often leave it out).
    pub fn satisfies(&self, wanted: &Platform) -> bool {
        let normalize = |variant: &Option<String>, arch: &str| match (arch, variant.as_deref()) {
            ("arm64", None | Some("v8")) => None,
            (_, v) => v.map(str::to_owned),
        };
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && (wanted.variant.is_none()
                || normalize(&self.variant, &self.architecture)
                    == normalize(&wanted.variant, &wanted.architecture))
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What a fetched document turned out to be.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // short-lived, never stored in bulk
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

/// Reads a manifest or index, deciding by the declared media type (the HTTP header or the
/// descriptor's), falling back to the document's own `mediaType` and shape.
pub fn parse_document(
    data: &[u8],
    declared: Option<&str>,
    digest: &str,
) -> Result<(Document, String)> {
    let malformed =
        |reason: String| Error::Malformed { what: "manifest", digest: digest.to_owned(), reason };
    let value: serde_json::Value =
        serde_json::from_slice(data).map_err(|err| malformed(err.to_string()))?;
    let inner = value.get("mediaType").and_then(|m| m.as_str()).map(str::to_owned);
    let declared = declared
        .map(|d| d.split(';').next().unwrap_or(d).trim().to_owned())
        .filter(|d| !d.is_empty() && d != "application/json" && d != "text/plain");
    let media_type = match (declared, inner) {
        (Some(declared), _) => declared,
        (None, Some(inner)) => inner,
        (None, None) if value.get("manifests").is_some() => media::OCI_INDEX.to_owned(),
        (None, None) if value.get("layers").is_some() => media::OCI_MANIFEST.to_owned(),
        (None, None) if value.get("fsLayers").is_some() => media::DOCKER_SCHEMA1.to_owned(),
        (None, None) => return Err(malformed("neither a manifest nor an index".into())),
    };
    match media_type.as_str() {
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => {
            let manifest: Manifest = serde_json::from_value(value).map_err(|err| malformed(err.to_string()))?;
            if manifest.schema_version != 2 {
                return Err(malformed(format!("schemaVersion {} (expected 2)", manifest.schema_version)));
            }
            Ok((Document::Manifest(manifest), media_type))
        }
        media::OCI_INDEX | media::DOCKER_LIST => {
            let index: Index = serde_json::from_value(value).map_err(|err| malformed(err.to_string()))?;
            Ok((Document::Index(index), media_type))
        }
        media::DOCKER_SCHEMA1 | media::DOCKER_SCHEMA1_SIGNED => Err(Error::UnsupportedMediaType {
            media_type,
            what: "a manifest (Docker schema 1 is deprecated and unsupported; push the image again with a current tool)",
        }),
        _ => Err(Error::UnsupportedMediaType { media_type, what: "a manifest" }),
    }
}

/// The descriptor of `index` for `wanted`, or an error listing what there is.
pub fn select_platform<'a>(
    index: &'a Index,
    wanted: &Platform,
    reference: &str,
) -> Result<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            matches!(
                d.media_type.as_str(),
                media::OCI_MANIFEST
                    | media::DOCKER_MANIFEST
                    | media::OCI_INDEX
                    | media::DOCKER_LIST
            )
        })
        .collect();
    if let Some(found) =
        candidates.iter().find(|d| d.platform.as_ref().is_some_and(|p| p.satisfies(wanted)))
    {
        return Ok(found);
    }
    // An index without platforms (common in OCI layouts of one image) means "this one".
    if candidates.len() == 1 && candidates[0].platform.is_none() {
        return Ok(candidates[0]);
    }
    let available: Vec<String> =
        candidates.iter().filter_map(|d| d.platform.as_ref().map(ToString::to_string)).collect();
    Err(Error::NoMatchingPlatform {
        reference: reference.to_owned(),
        wanted: wanted.to_string(),
        available: if available.is_empty() { "none that say".into() } else { available.join(", ") },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_of(platforms: &[&str]) -> Index {
        Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.into()),
            manifests: platforms
                .iter()
                .map(|p| Descriptor {
                    platform: Some(Platform::parse(p).expect("platform")),
                    ..Descriptor::new(media::OCI_MANIFEST, &Digest::of(p.as_bytes()), 1)
                })
                .collect(),
            annotations: None,
        }
    }

    #[test]
    fn platforms_are_chosen_like_docker() {
        let index = index_of(&["linux/arm/v7", "linux/arm64", "linux/amd64"]);
        let pick = |wanted: &str| {
            select_platform(&index, &Platform::parse(wanted).expect("p"), "x")
                .map(|d| d.digest.clone())
        };
        assert_eq!(pick("linux/amd64").expect("amd64"), Digest::of(b"linux/amd64").to_string());
        assert_eq!(pick("linux/arm64/v8").expect("arm64"), Digest::of(b"linux/arm64").to_string());
        let err = pick("linux/s390x").expect_err("none");
        assert!(err.to_string().contains("linux/arm/v7, linux/arm64, linux/amd64"), "{err}");
        assert!(Platform::parse("linux").is_err());
    }

    #[test]
    fn documents_are_recognized_and_schema1_refused() {
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
        let (document, media_type) = parse_document(manifest, None, "d").expect("manifest");
        assert!(matches!(document, Document::Manifest(_)));
        assert_eq!(media_type, media::DOCKER_MANIFEST);
        let err = parse_document(br#"{"schemaVersion":1,"fsLayers":[]}"#, None, "d")
            .expect_err("schema1");
        assert!(err.to_string().contains("schema 1"), "{err}");
        let err = parse_document(b"{}", Some("application/x-weird"), "d").expect_err("unknown");
        assert!(matches!(err, Error::UnsupportedMediaType { .. }), "{err}");
        assert!(parse_document(b"not json", None, "d").is_err());
    }

    #[test]
    fn layer_compression_from_media_types() {
        assert_eq!(
            Compression::of_media_type(media::DOCKER_LAYER_GZIP).expect("gzip"),
            Compression::Gzip
        );
        assert_eq!(
            Compression::of_media_type(media::OCI_LAYER_ZSTD).expect("zstd"),
            Compression::Zstd
        );
        assert_eq!(
            Compression::of_media_type(
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            )
            .expect("foreign"),
            Compression::Gzip
        );
        assert!(Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+lz4").is_err());
    }
}
