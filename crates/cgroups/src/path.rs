//! Turning `linux.cgroupsPath` into a path inside the cgroup hierarchy.

use std::path::{Component, Path, PathBuf};

use crate::{Error, Result};

/// The cgroup path (relative to each hierarchy's root, starting with `/`) for a container.
///
/// - no `cgroupsPath`: `/<id>`, as runc does;
/// - an absolute or relative path: taken from the hierarchy root;
/// - with `systemd` set, the `slice:prefix:name` form: `/a.slice/a-b.slice/prefix-name.scope`,
///   placed on cgroupfs the way systemd would have placed it.
///
/// A path that would climb out of the hierarchy with `..` is refused.
pub fn cgroup_path(
    cgroups_path: Option<&Path>,
    container_id: &str,
    systemd: bool,
) -> Result<PathBuf> {
    let raw = cgroups_path.map(|path| path.to_string_lossy().into_owned()).unwrap_or_default();
    if raw.is_empty() {
        return normalize(&format!("/{container_id}"));
    }
    if systemd || is_systemd_form(&raw) {
        return systemd_path(&raw, container_id);
    }
    normalize(&raw)
}

fn is_systemd_form(raw: &str) -> bool {
    !raw.starts_with('/') && raw.split(':').count() == 3
}

fn systemd_path(raw: &str, container_id: &str) -> Result<PathBuf> {
    let bad = || Error::BadSystemdPath { path: raw.to_owned() };
    let parts: Vec<&str> = raw.split(':').collect();
    let [slice, prefix, name] = parts.as_slice() else { return Err(bad()) };
    if [slice, prefix, name].iter().any(|part| part.contains('/')) {
        return Err(bad());
    }
    let slice = if slice.is_empty() { "system.slice" } else { slice };
    let name = if name.is_empty() { container_id } else { name };
    let mut path = expand_slice(slice).ok_or_else(bad)?;
    // A name that already is a unit (`foo.slice`) is used as it is.
    if name.ends_with(".slice") {
        path.push(name);
    } else if prefix.is_empty() {
        path.push(format!("{name}.scope"));
    } else {
        path.push(format!("{prefix}-{name}.scope"));
    }
    normalize(&path.to_string_lossy())
}

/// `a-b-c.slice` lives at `/a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    let mut path = PathBuf::from("/");
    if stem == "-" {
        return Some(path);
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return None;
    }
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path)
}

fn normalize(raw: &str) -> Result<PathBuf> {
    let mut out = PathBuf::from("/");
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::PathEscapes { path: raw.to_owned() });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: Option<&str>, systemd: bool, expected: &str) {
        let got = cgroup_path(input.map(Path::new), "abc", systemd).expect("path");
        assert_eq!(got, PathBuf::from(expected), "input {input:?}");
    }

    #[test]
    fn plain_paths() {
        check(None, false, "/abc");
        check(Some("/berth/abc"), false, "/berth/abc");
        check(Some("berth/abc"), false, "/berth/abc");
        check(Some("/a/./b/"), false, "/a/b");
    }

    #[test]
    fn systemd_paths() {
        check(Some("system.slice:berth:abc"), true, "/system.slice/berth-abc.scope");
        check(Some("user-1000.slice:docker:x"), true, "/user.slice/user-1000.slice/docker-x.scope");
        check(Some(":berth:"), true, "/system.slice/berth-abc.scope");
        check(Some("-.slice:p:n"), true, "/p-n.scope");
        // Recognised without --systemd-cgroup too, as containerd passes it either way.
        check(Some("machine.slice:libpod:z"), false, "/machine.slice/libpod-z.scope");
    }

    #[test]
    fn escapes_and_malformed_paths_are_refused() {
        for bad in ["../..", "/a/../../b", "a/.."] {
            let err = cgroup_path(Some(Path::new(bad)), "abc", false).expect_err(bad);
            assert!(matches!(err, Error::PathEscapes { .. }), "{bad}: {err}");
        }
        for bad in ["nosuffix:p:n", "a--b.slice:p:n", "system.slice:p/../x:n"] {
            let err = cgroup_path(Some(Path::new(bad)), "abc", true).expect_err(bad);
            assert!(matches!(err, Error::BadSystemdPath { .. }), "{bad}: {err}");
        }
    }
}
