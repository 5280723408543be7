//! `RUN --mount=type=ssh`: the build's SSH agents (`--ssh ID[=SOCKET|KEY[,KEY...]]`)
//! reach a step through a socket of its own, owned and moded as the mount asks, that
//! forwards each connection to the agent. Keys given as files are loaded into an
//! `ssh-agent` the build starts and ends. The agent never enters a layer: the socket is
//! bind-mounted for the step only, and the keys stay on the host.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

/// The agents a build forwards, by id.
#[derive(Debug, Default)]
pub struct Agents {
    sockets: BTreeMap<String, PathBuf>,
    own: Vec<OwnAgent>,
}

#[derive(Debug)]
struct OwnAgent {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for OwnAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agents {
    /// Resolves `--ssh` values: one socket is used as it is; key files are loaded into an
    /// agent started under `work`.
    pub fn start(wanted: &BTreeMap<String, Vec<PathBuf>>, work: &Path) -> Result<Agents, String> {
        let mut agents = Agents::default();
        for (id, paths) in wanted {
            use std::os::unix::fs::FileTypeExt;
            let sockets = paths
                .iter()
                .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()))
                .count();
            match (paths.as_slice(), sockets) {
                ([], _) => {
                    return Err(format!(
                        "--ssh {id}: no agent socket (SSH_AUTH_SOCK is not set): start ssh-agent, or give key files as --ssh {id}=KEYFILE"
                    ))
                }
                ([socket], 1) => {
                    agents.sockets.insert(id.clone(), socket.clone());
                }
                (_, 0) => {
                    let own = start_agent(id, paths, work)?;
                    agents.sockets.insert(id.clone(), own._dir.path().join("agent.sock"));
                    agents.own.push(own);
                }
                _ => {
                    return Err(format!(
                        "--ssh {id}: give one agent socket or key files, not both"
                    ))
                }
            }
        }
        Ok(agents)
    }

    pub fn socket(&self, id: &str) -> Option<&Path> {
        self.sockets.get(id).map(PathBuf::as_path)
    }
}

fn start_agent(id: &str, keys: &[PathBuf], work: &Path) -> Result<OwnAgent, String> {
    for key in keys {
        if !key.is_file() {
            return Err(format!("--ssh {id}={}: not an agent socket or a key file", key.display()));
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("ssh-")
        .tempdir_in(work)
        .map_err(|e| format!("create a directory for an ssh-agent: {e}"))?;
    let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700));
    let socket = dir.path().join("agent.sock");
    let mut command = Command::new("ssh-agent");
    command
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    berth_sys::process::die_with_parent(&mut command);
    let mut child = command.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("--ssh {id}: key files need ssh-agent (apt-get install openssh-client)")
        } else {
            format!("--ssh {id}: cannot start ssh-agent: {e}")
        }
    })?;
    // ssh-agent says where it listens once it does.
    let mut first = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut first);
    }
    let agent = OwnAgent { child, _dir: dir };
    if !first.starts_with("SSH_AUTH_SOCK") {
        return Err(format!(
            "--ssh {id}: ssh-agent did not start (try `ssh-agent -D -a {}` by hand; a socket path longer than 107 bytes is refused: use a shorter --root)",
            socket.display()
        ));
    }
    let output = Command::new("ssh-add")
        .args(keys)
        .env("SSH_AUTH_SOCK", &socket)
        .env_remove("SSH_ASKPASS")
        .env_remove("DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("--ssh {id}: cannot run ssh-add: {e}"))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "--ssh {id}: ssh-add refused the key ({}); a key with a passphrase must be added to your own agent, then give --ssh {id}",
            said.trim()
        ));
    }
    Ok(agent)
}

/// A socket at a path that forwards every connection to an agent, until dropped.
#[derive(Debug)]
pub struct Forward {
    listener: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Forward {
    /// Listens at `path` (made `mode`, owned `uid:gid`) and forwards to `agent`.
    pub fn start(
        path: &Path,
        agent: &Path,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<Forward, String> {
        let listener =
            UnixListener::bind(path).map_err(|e| format!("listen at {}: {e}", path.display()))?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        let handle: OwnedFd = listener
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("listen at {}: {e}", path.display()))?;
        let agent = agent.to_owned();
        let thread = std::thread::spawn(move || {
            // Ends when Drop shuts the listener down (accept then fails).
            while let Ok((client, _)) = listener.accept() {
                let agent = agent.clone();
                std::thread::spawn(move || relay(client, &agent));
            }
        });
        Ok(Forward { listener: handle, thread: Some(thread) })
    }
}

fn relay(client: UnixStream, agent: &Path) {
    let Ok(upstream) = UnixStream::connect(agent) else {
        tracing::warn!("the ssh agent at {} does not answer", agent.display());
        return;
    };
    let (Ok(mut client_read), Ok(mut upstream_write)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let back = std::thread::spawn(move || {
        let (mut upstream, mut client) = (upstream, client);
        let _ = std::io::copy(&mut upstream, &mut client);
        let _ = client.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut client_read, &mut upstream_write);
    let _ = upstream_write.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = berth_sys::nix::sys::socket::shutdown(
            self.listener.as_raw_fd(),
            berth_sys::nix::sys::socket::Shutdown::Both,
        );
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_forward_relays_both_ways_and_ends_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent");
        let agent = UnixListener::bind(&agent_path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = agent.accept().unwrap();
            let mut question = [0u8; 4];
            conn.read_exact(&mut question).unwrap();
            conn.write_all(b"pong").unwrap();
            question
        });
        let at = dir.path().join("forward");
        let forward = Forward::start(&at, &agent_path, 0, 0, 0o600).unwrap();
        let meta = std::fs::metadata(&at).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let mut client = UnixStream::connect(&at).unwrap();
        client.write_all(b"ping").unwrap();
        let mut answer = [0u8; 4];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"pong");
        assert_eq!(&server.join().unwrap(), b"ping");
        drop(forward); // must not hang
        assert!(UnixStream::connect(&at).is_err());
    }
}
