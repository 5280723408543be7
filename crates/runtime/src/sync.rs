//! Messages between the runtime command and the processes it forks.
//!
//! A `SOCK_SEQPACKET` pair keeps message boundaries, and its close-on-exec descriptor doubles
//! as a signal: when the container's `execve` succeeds the child's end closes, and the parent
//! reads end-of-file instead of an error.

use std::os::fd::{AsFd, OwnedFd};

use berth_sys::nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use berth_sys::Errno;
use serde::{Deserialize, Serialize};

use crate::error::{sys, Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Parent → child: carry on.
    Go,
    /// Child → parent: a new user namespace exists; write its id mappings.
    MapIds,
    /// Stage one → parent: the pid of the process that will exec the container's program.
    Pid(i32),
    /// Init → parent: mounts are done; run the prestart and createRuntime hooks.
    RunHooks,
    /// Init → parent: everything up to `start` is done.
    Ready,
    /// Child → parent: what failed, as the user should read it.
    Error(String),
}

#[derive(Debug)]
pub struct Channel(OwnedFd);

impl Channel {
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
                .map_err(sys("create a socket pair"))?;
        Ok((Channel(a), Channel(b)))
    }

    pub fn send(&self, message: &Message) -> Result<()> {
        let bytes = serde_json::to_vec(message).map_err(|err| Error::Init(err.to_string()))?;
        loop {
            match berth_sys::nix::unistd::write(self.0.as_fd(), &bytes) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(err) => return Err(sys("send a message to the container process")(err)),
            }
        }
    }

    /// The next message, or `None` when the other end has closed.
    pub fn recv(&self) -> Result<Option<Message>> {
        let mut buffer = vec![0u8; 64 * 1024];
        let length = loop {
            match berth_sys::nix::unistd::read(self.0.as_fd(), &mut buffer) {
                Ok(length) => break length,
                Err(Errno::EINTR) => continue,
                Err(Errno::ECONNRESET) => return Ok(None),
                Err(err) => return Err(sys("read from the container process")(err)),
            }
        };
        if length == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&buffer[..length]).map(Some).map_err(|err| {
            Error::Init(format!("garbled message from the container process: {err}"))
        })
    }

    /// Receives and expects `expected`; an `Error` message becomes `Error::Init`.
    pub fn expect(&self, expected: &Message, waiting_for: &str) -> Result<()> {
        match self.recv()? {
            Some(message) if &message == expected => Ok(()),
            Some(Message::Error(text)) => Err(Error::Setup(text)),
            Some(other) => Err(Error::Init(format!(
                "expected {expected:?} while waiting for {waiting_for}, got {other:?}"
            ))),
            None => Err(Error::Init(format!("the container process exited while {waiting_for}"))),
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}
