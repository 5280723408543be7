//! Reading a bundle's `config.json`.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::error::{io, Error, Result};

/// A parsed configuration, with the properties the parser did not know.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub spec: Spec,
    /// Paths of properties that were ignored, e.g. `process.user.fooBar`. The runtime spec
    /// requires that unknown properties be ignored, so they are warnings, not errors.
    pub unknown_fields: Vec<String>,
}

/// Reads and parses `<bundle>/config.json`.
pub fn load(bundle: &Path) -> Result<LoadedSpec> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(io("read", &path))?;
    parse(&bytes, &path)
}

/// Parses configuration bytes; `path` is only used in messages.
pub fn parse(bytes: &[u8], path: &Path) -> Result<LoadedSpec> {
    let mut unknown_fields = Vec::new();
    let mut json = serde_json::Deserializer::from_slice(bytes);
    // serde_ignored shows an Option level as "?": drop it from the path users read.
    let mut track = |field: serde_ignored::Path<'_>| {
        let path = field.to_string();
        let clean: Vec<&str> = path.split('.').filter(|part| *part != "?").collect();
        unknown_fields.push(clean.join("."));
    };
    let tracked = serde_ignored::Deserializer::new(&mut json, &mut track);
    let spec: Spec =
        serde_path_to_error::deserialize(tracked).map_err(|err| Error::InvalidConfig {
            path: path.to_path_buf(),
            field: match err.path().to_string().as_str() {
                "." => "the top level".to_owned(),
                field => field.to_owned(),
            },
            message: err.inner().to_string(),
        })?;
    json.end().map_err(|err| Error::InvalidConfig {
        path: path.to_path_buf(),
        field: "the end of the document".to_owned(),
        message: err.to_string(),
    })?;
    Ok(LoadedSpec { spec, unknown_fields })
}

/// The rootfs directory of a spec, made absolute against the bundle.
pub fn rootfs_path(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let root = spec.root().as_ref().ok_or_else(|| {
        crate::error::invalid("root", "is missing; set root.path to the rootfs directory")
    })?;
    let path =
        if root.path().is_absolute() { root.path().clone() } else { bundle.join(root.path()) };
    let canonical = std::fs::canonicalize(&path).map_err(|source| Error::InvalidSpec {
        field: "root.path".to_owned(),
        reason: format!(
            "rootfs {} cannot be used: {source}; create it or fix root.path in config.json",
            path.display()
        ),
    })?;
    if !canonical.is_dir() {
        return Err(crate::error::invalid(
            "root.path",
            format!("{} is not a directory", canonical.display()),
        ));
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<LoadedSpec> {
        parse(text.as_bytes(), Path::new("config.json"))
    }

    #[test]
    fn unknown_fields_are_reported_not_fatal() {
        let loaded = parse_str(r#"{"ociVersion":"1.2.0","root":{"path":"rootfs"},"fancy":1,"process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0},"extra":true}}"#)
            .expect("parse");
        assert_eq!(loaded.unknown_fields, vec!["fancy".to_owned(), "process.extra".to_owned()]);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = parse_str(r#"{"ociVersion":"1.2.0","process":{"cwd":"/","args":["sh"],"user":{"uid":"zero","gid":0}}}"#)
            .expect_err("type error");
        let message = err.to_string();
        assert!(message.contains("process.user.uid"), "{message}");
    }

    #[test]
    fn malformed_json_is_an_error_with_position() {
        let err = parse_str(r#"{"ociVersion": "1.2.0", "#).expect_err("syntax");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn unknown_namespace_type_is_an_error() {
        let err = parse_str(r#"{"ociVersion":"1.2.0","linux":{"namespaces":[{"type":"bogus"}]}}"#)
            .expect_err("bad ns");
        assert!(err.to_string().contains("linux.namespaces[0].type"), "{err}");
    }
}
