//! `ADD <git repository> <dir>`: a shallow checkout of one ref by the host's `git`, keyed
//! by the commit it resolved to (so a moved branch busts the cache and an unchanged one
//! keeps it), as BuildKit's git source does.
//!
//! The reference is written as BuildKit reads it: `URL[#REF[:SUBDIR]]`, where URL is
//! `git://...`, `ssh://...`, `git@host:path`, or an `http(s)://` address whose path ends
//! in `.git`. The clone runs with the user's and the system's git configuration switched
//! off, no terminal prompt, and the `file` and `ext` transports refused (a submodule may
//! not read the building host's repositories).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A git reference as an ADD source names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRef {
    pub remote: String,
    /// A branch, a tag or a commit; the remote's HEAD when `None`.
    pub reference: Option<String>,
    /// A directory inside the repository whose content is added instead of the whole.
    pub subdir: Option<String>,
}

/// Whether an ADD source names a git repository.
pub fn is_git(source: &str) -> bool {
    if ["git://", "git@", "ssh://", "git+ssh://"].iter().any(|p| source.starts_with(p)) {
        return true;
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        let path = source.split(['#', '?']).next().unwrap_or(source);
        return path.trim_end_matches('/').ends_with(".git");
    }
    false
}

/// Splits `URL#REF:SUBDIR` into its parts.
pub fn parse(source: &str) -> Result<GitRef, String> {
    let (remote, fragment) = match source.split_once('#') {
        Some((remote, fragment)) => (remote, Some(fragment)),
        None => (source, None),
    };
    let remote = remote.strip_prefix("git+").unwrap_or(remote).to_owned();
    let (reference, subdir) = match fragment {
        None => (None, None),
        Some(fragment) => match fragment.split_once(':') {
            Some((r, s)) => (Some(r), Some(s)),
            None => (Some(fragment), None),
        },
    };
    let reference = reference.filter(|r| !r.is_empty()).map(str::to_owned);
    if let Some(r) = &reference {
        // Never an option to git, and nothing a ref name cannot hold.
        if r.starts_with('-') || r.contains("..") || r.chars().any(|c| c.is_whitespace()) {
            return Err(format!("{r:?} is not a branch, tag or commit name"));
        }
    }
    let subdir =
        subdir.map(|s| s.trim_matches('/').to_owned()).filter(|s| !s.is_empty() && s != ".");
    if let Some(s) = &subdir {
        if s.split('/').any(|part| part == "..") {
            return Err(format!("the subdirectory {s:?} leaves the repository"));
        }
    }
    if remote.starts_with('-') {
        return Err(format!("{remote:?} is not a repository address"));
    }
    Ok(GitRef { remote, reference, subdir })
}

/// A checkout on disk.
#[derive(Debug)]
pub struct Checkout {
    /// The repository's work tree (with `.git` inside).
    pub dir: PathBuf,
    /// The full commit id checked out.
    pub commit: String,
}

fn looks_like_commit(reference: &str) -> bool {
    (7..=64).contains(&reference.len()) && reference.chars().all(|c| c.is_ascii_hexdigit())
}

/// Clones `git` into a new directory `dir`; `ssh_agent` is offered to `ssh` for
/// `git@`/`ssh://` remotes (the build's `--ssh default`).
pub fn checkout(git: &GitRef, dir: &Path, ssh_agent: Option<&Path>) -> Result<Checkout, String> {
    let run = |args: &[&str], quiet_failure: bool| -> Result<String, String> {
        let mut command = Command::new("git");
        command
            .args(["-c", "protocol.file.allow=never", "-c", "protocol.ext.allow=never"])
            // A server that stops sending fails the step instead of hanging it.
            .args(["-c", "http.lowSpeedLimit=1", "-c", "http.lowSpeedTime=60"])
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("HOME", dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            // Only the agent the build was given (--ssh default): never the building
            // host's own keys or ssh configuration, which ssh would find through root's
            // passwd entry whatever HOME says. Host keys are not known here (as BuildKit
            // without known hosts).
            .env(
                "GIT_SSH_COMMAND",
                "ssh -F /dev/null -o BatchMode=yes -o IdentityFile=none \
                 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
                 -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(agent) = ssh_agent {
            command.env("SSH_AUTH_SOCK", agent);
        }
        for name in
            ["http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"]
        {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        let output = command.output().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "git is not installed on this machine (apt-get install git), and ADD of a repository needs it".to_owned()
            } else {
                format!("cannot run git: {e}")
            }
        })?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned());
        }
        let said = String::from_utf8_lossy(&output.stderr);
        let said = said.trim().lines().last().unwrap_or("").trim_start_matches("fatal: ");
        if quiet_failure {
            Err(said.to_owned())
        } else {
            Err(format!("git {}: {said}", args.first().copied().unwrap_or_default()))
        }
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    run(&["init", "-q", "."], false)?;
    let wanted = git.reference.as_deref().unwrap_or("HEAD");
    let shallow = run(&["fetch", "-q", "--depth=1", "--no-tags", "--", &git.remote, wanted], true);
    let commit_spec = match shallow {
        Ok(_) => "FETCH_HEAD".to_owned(),
        Err(first) if looks_like_commit(wanted) => {
            // An abbreviated commit is no ref a server can send alone: fetch its history
            // and find it there.
            run(
                &[
                    "fetch",
                    "-q",
                    "--",
                    &git.remote,
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                true,
            )
            .map_err(|e| unreachable_remote(&git.remote, &e))?;
            run(&["rev-parse", "--verify", "-q", &format!("{wanted}^{{commit}}")], true).map_err(
                |_| {
                    format!(
                        "{wanted:?} names no commit of {} (the shallow fetch said: {first})",
                        git.remote
                    )
                },
            )?
        }
        Err(e) if e.contains("couldn't find remote ref") => {
            return Err(format!("{} has no branch or tag {wanted:?}", git.remote))
        }
        Err(e) => return Err(unreachable_remote(&git.remote, &e)),
    };
    run(&["-c", "advice.detachedHead=false", "checkout", "-q", &commit_spec], false)?;
    if dir.join(".gitmodules").exists() {
        run(&["submodule", "update", "-q", "--init", "--recursive", "--depth=1"], false)?;
    }
    let commit = run(&["rev-parse", "HEAD"], false)?;
    Ok(Checkout { dir: dir.to_owned(), commit })
}

fn unreachable_remote(remote: &str, said: &str) -> String {
    format!(
        "cannot fetch {remote} ({said}): does this machine reach it, and may it read it? Clone it into the build context and COPY it instead"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_sources_are_known_by_their_form() {
        for yes in [
            "git://example.com/r.git",
            "git@github.com:org/repo.git#main",
            "ssh://git@example.com/r",
            "https://github.com/moby/buildkit.git#v0.10.1",
            "https://example.com/r.git/",
            "http://127.0.0.1:9/x.git?ref=main",
        ] {
            assert!(is_git(yes), "{yes}");
        }
        for no in ["https://example.com/tool.tgz", "http://example.com/git/file", "local.git"] {
            assert!(!is_git(no), "{no}");
        }
    }

    #[test]
    fn fragments_give_a_ref_and_a_subdirectory() {
        assert_eq!(
            parse("https://h/r.git#v1.2:docs/").unwrap(),
            GitRef {
                remote: "https://h/r.git".into(),
                reference: Some("v1.2".into()),
                subdir: Some("docs".into())
            }
        );
        assert_eq!(
            parse("git@h:o/r.git").unwrap(),
            GitRef { remote: "git@h:o/r.git".into(), reference: None, subdir: None }
        );
        assert_eq!(parse("git://h/r.git#:sub").unwrap().reference, None);
        assert!(parse("git://h/r.git#--upload-pack=x").is_err());
        assert!(parse("git://h/r.git#main:../../etc").is_err());
        assert!(parse("git+ssh://h/r").unwrap().remote.starts_with("ssh://"));
    }
}
