//! Running OCI hooks: the state on stdin, a timeout, and output kept for the error message.

use std::io::{Read, Seek, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use berth_sys::nix::sys::memfd::{memfd_create, MFdFlags};
use berth_sys::nix::sys::signal::{kill, Signal};
use berth_sys::nix::sys::wait::WaitStatus;
use berth_sys::nix::unistd::Pid;
use oci_spec::runtime::Hook;

use crate::error::{Error, Result};

/// The hook points of the runtime spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// The hooks of this kind in a spec.
    pub fn of(self, spec: &oci_spec::runtime::Spec) -> Vec<Hook> {
        let Some(hooks) = spec.hooks() else { return Vec::new() };
        #[allow(deprecated)]
        let list = match self {
            HookKind::Prestart => hooks.prestart(),
            HookKind::CreateRuntime => hooks.create_runtime(),
            HookKind::CreateContainer => hooks.create_container(),
            HookKind::StartContainer => hooks.start_container(),
            HookKind::Poststart => hooks.poststart(),
            HookKind::Poststop => hooks.poststop(),
        };
        list.clone().unwrap_or_default()
    }
}

/// Runs `hooks` in order; the first failure stops the list and is returned.
pub fn run_all(kind: HookKind, hooks: &[Hook], state_json: &[u8]) -> Result<()> {
    for hook in hooks {
        run_one(kind, hook, state_json)?;
    }
    Ok(())
}

/// Runs `hooks` in order, logging failures and carrying on (poststart and poststop).
pub fn run_all_warn(kind: HookKind, hooks: &[Hook], state_json: &[u8]) {
    for hook in hooks {
        if let Err(err) = run_one(kind, hook, state_json) {
            tracing::warn!("{err}");
        }
    }
}

fn run_one(kind: HookKind, hook: &Hook, state_json: &[u8]) -> Result<()> {
    let fail =
        |reason: String| Error::Hook { kind: kind.name(), path: hook.path().clone(), reason };
    let timeout = crate::plan::hook_timeout(hook.timeout())?;
    let args = hook.args().clone().unwrap_or_default();
    let output = memfd_create(c"berth-hook-output", MFdFlags::MFD_CLOEXEC)
        .map_err(|err| fail(err.to_string()))?;
    let mut output = std::fs::File::from(output);
    let mut command = Command::new(hook.path());
    if let Some((arg0, rest)) = args.split_first() {
        command.arg0(arg0).args(rest);
    }
    command.env_clear();
    for pair in hook.env().iter().flatten() {
        if let Some((key, value)) = pair.split_once('=') {
            command.env(key, value);
        }
    }
    let sink = || output.try_clone().map(Stdio::from).map_err(|err| fail(err.to_string()));
    command.stdin(Stdio::piped()).stdout(sink()?).stderr(sink()?);
    let mut child = command.spawn().map_err(|err| fail(format!("cannot start it: {err}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook may exit without reading its input; that is not a failure.
        let _ = stdin.write_all(state_json);
    }
    let pid = Pid::from_raw(child.id() as i32);
    let status = berth_sys::process::wait_child_timeout(pid, timeout)
        .map_err(|err| fail(format!("wait failed: {err}")))?;
    let mut text = String::new();
    let _ = output.rewind();
    let _ = Read::by_ref(&mut output).take(4096).read_to_string(&mut text);
    let text = text.trim();
    let detail = if text.is_empty() { String::new() } else { format!(": {text}") };
    match status {
        Some(WaitStatus::Exited(_, 0)) => Ok(()),
        Some(WaitStatus::Exited(_, code)) => Err(fail(format!("exit status {code}{detail}"))),
        Some(WaitStatus::Signaled(_, signal, _)) => {
            Err(fail(format!("killed by {signal}{detail}")))
        }
        Some(other) => Err(fail(format!("unexpected status {other:?}"))),
        None => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = berth_sys::process::wait_child(pid);
            let seconds = timeout.map(|t| t.as_secs()).unwrap_or(0);
            Err(fail(format!("timed out after {seconds}s{detail}")))
        }
    }
}
