//! Image references as Docker writes them (`busybox`, `127.0.0.1:5000/app:v1`,
//! `ghcr.io/org/app@sha256:...`), normalized the way Docker does: a missing registry is
//! `docker.io`, a one-part Docker Hub name is under `library/`, a missing tag is `latest`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::{Error, Result};

pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `127.0.0.1:5000`, `ghcr.io`.
    pub registry: String,
    /// `library/busybox`, `org/app`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

fn bad(text: &str, reason: impl Into<String>) -> Error {
    Error::BadReference { reference: text.to_owned(), reason: reason.into() }
}

fn valid_component(component: &str) -> bool {
    // [a-z0-9]+ separated by '.', '_', '__' or runs of '-'.
    let bytes = component.as_bytes();
    if bytes.is_empty()
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return false;
    }
    let mut previous_separator = String::new();
    for &b in bytes {
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            if !previous_separator.is_empty() {
                let sep = previous_separator.as_str();
                let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
                if !ok {
                    return false;
                }
                previous_separator.clear();
            }
        } else if matches!(b, b'.' | b'_' | b'-') {
            previous_separator.push(b as char);
        } else {
            return false;
        }
    }
    true
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn looks_like_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(text: &str) -> Result<Reference> {
        if text.is_empty() {
            return Err(bad(text, "empty image name"));
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(digest.parse::<Digest>()?)),
            None => (text, None),
        };
        let (name, tag) = match name.rsplit_once(':') {
            Some((before, after)) if !after.contains('/') => (before, Some(after.to_owned())),
            _ => (name, None),
        };
        if let Some(tag) = &tag {
            if !valid_tag(tag) {
                return Err(bad(
                    text,
                    format!(
                        "invalid tag {tag:?}: use letters, digits, '_', '.' and '-' (up to 128)"
                    ),
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if looks_like_registry(first) => {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.len() > 255 {
            return Err(bad(text, "repository name longer than 255 characters"));
        }
        if let Some(component) = repository.split('/').find(|c| !valid_component(c)) {
            let reason = if component.chars().any(|c| c.is_ascii_uppercase()) {
                "repository names must be lowercase".to_owned()
            } else {
                format!("invalid repository name component {component:?}")
            };
            return Err(bad(text, reason));
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_owned()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }
}

impl Reference {
    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short form Docker prints: `busybox:latest` for Docker Hub's library images.
    pub fn familiar(&self) -> String {
        let name = self.familiar_name();
        match (&self.tag, &self.digest) {
            (Some(tag), _) => format!("{name}:{tag}"),
            (None, Some(digest)) => format!("{name}@{digest}"),
            (None, None) => name,
        }
    }

    /// The repository as Docker prints it: `busybox`, `127.0.0.1:5000/app`.
    pub fn familiar_name(&self) -> String {
        if self.registry == DOCKER_HUB {
            self.repository.strip_prefix("library/").unwrap_or(&self.repository).to_owned()
        } else {
            self.name()
        }
    }

    /// What to ask the registry for: the digest when there is one, else the tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference { tag: Some(tag.to_owned()), digest: None, ..self.clone() }
    }

    /// The same repository at `digest`, without tag.
    pub fn with_digest(&self, digest: &Digest) -> Reference {
        Reference { tag: None, digest: Some(digest.clone()), ..self.clone() }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &str) {
        let reference: Reference = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(reference.to_string(), expected, "{text}");
    }

    #[test]
    fn normalizes_like_docker() {
        check("busybox", "docker.io/library/busybox:latest");
        check("busybox:1.36", "docker.io/library/busybox:1.36");
        check("user/app", "docker.io/user/app:latest");
        check("index.docker.io/library/alpine:3", "docker.io/library/alpine:3");
        check("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest");
        check("localhost/app:v1", "localhost/app:v1");
        check("ghcr.io/org/sub/app:v1.2-rc_3", "ghcr.io/org/sub/app:v1.2-rc_3");
        let digest = Digest::of(b"x");
        check(&format!("busybox@{digest}"), &format!("docker.io/library/busybox@{digest}"));
        check(&format!("busybox:1@{digest}"), &format!("docker.io/library/busybox:1@{digest}"));
    }

    #[test]
    fn familiar_forms() {
        let reference: Reference = "busybox".parse().expect("parse");
        assert_eq!(reference.familiar(), "busybox:latest");
        let reference: Reference = "127.0.0.1:5000/a/b:t".parse().expect("parse");
        assert_eq!(reference.familiar(), "127.0.0.1:5000/a/b:t");
    }

    #[test]
    fn refuses_bad_names() {
        for text in [
            "",
            "Busybox",
            "a//b",
            "app:",
            "app:-x",
            "-app",
            "app@sha256:zz",
            "a_-b",
            &format!("a:{}", "t".repeat(129)),
        ] {
            assert!(text.parse::<Reference>().is_err(), "{text:?} should be refused");
        }
    }
}
