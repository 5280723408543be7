//! Progress of transfers, reported per blob. The library only calls this trait; the
//! command line draws bars on a terminal or prints plain lines.

use std::io::Read;

use crate::digest::Digest;

pub trait Progress: Send + Sync {
    /// A blob transfer starts; `done` bytes are already there (a resumed download).
    fn start(&self, digest: &Digest, total: u64, done: u64);
    /// `bytes` more bytes went through.
    fn advance(&self, digest: &Digest, bytes: u64);
    /// A blob reached a state worth a line: "Already exists", "Pull complete", "Pushed".
    fn status(&self, digest: &Digest, status: &str);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &Digest, _: u64, _: u64) {}
    fn advance(&self, _: &Digest, _: u64) {}
    fn status(&self, _: &Digest, _: &str) {}
}

/// Reports bytes read through it.
pub struct ProgressReader<'a, R> {
    pub inner: R,
    pub digest: &'a Digest,
    pub progress: &'a dyn Progress,
}

impl<R> std::fmt::Debug for ProgressReader<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressReader").field("digest", self.digest).finish()
    }
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(self.digest, n as u64);
        Ok(n)
    }
}
