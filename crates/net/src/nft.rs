//! nftables scripts, applied in one transaction by `nft -f -`.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{io, Error, Result};

/// Applies an nftables script atomically: all of it or none of it.
pub fn apply(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Failed(format!("cannot run nft ({e}); install Debian's nftables")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let output = child.wait_with_output().map_err(io("run", "nft"))?;
    if !output.status.success() {
        return Err(Error::Failed(format!(
            "nft failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// The JSON listing of an `ip` table (`nft -j list table ip NAME`); `None` when there is no
/// such table (or nft cannot list it).
pub fn list_table_json(name: &str) -> Option<String> {
    let output = Command::new("nft")
        .args(["-j", "list", "table", "ip", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}
