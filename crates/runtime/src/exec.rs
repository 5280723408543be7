//! `exec`: a new process in a running container's namespaces and cgroup.
//!
//! ```text
//! exec command ─┬─ stage one: joins the user, pid and time namespaces, forks, exits
//!               └─ process: joins the others (mount last), becomes the configured user,
//!                           execs the program; a child of the exec command
//! ```

use std::convert::Infallible;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use berth_sys::nix::sched::CloneFlags;
use berth_sys::nix::sys::signal::{kill, Signal};
use berth_sys::nix::unistd::{self, Pid};
use berth_sys::process::Fork;
use oci_spec::runtime::{Capabilities, Capability, Process};

use crate::container::{hook_state_json, Runtime};
use crate::error::{invalid, io, sys, Error, Result};
use crate::init::{self, error_chain};
use crate::plan::{self, CLONE_NEWTIME};
use crate::state::{write_pid_file, Status};
use crate::sync::{Channel, Message};
use crate::tty::{self, ExitStatus};

/// What `exec` runs and how.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub process: Process,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: i32,
    /// A sub-cgroup of the container's to run in (`--cgroup`).
    pub sub_cgroup: Option<String>,
    pub ignore_paused: bool,
}

/// The result of `exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// The process runs on, detached; its pid.
    Detached(i32),
    /// The process ran in the foreground and ended.
    Exited(ExitStatus),
}

/// The flags of `exec` that change the container's default process.
#[derive(Debug, Clone, Default)]
pub struct ProcessOverrides {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub user: Option<(u32, Option<u32>)>,
    pub additional_gids: Vec<u32>,
    pub capabilities: Vec<String>,
    pub tty: bool,
    pub no_new_privileges: bool,
    pub apparmor: Option<String>,
    pub selinux_label: Option<String>,
}

impl ExecOptions {
    /// The process `exec` runs when no `--process` file is given: the container's own
    /// process with the command line, environment and identity replaced as asked.
    pub fn process_from(base: &Process, overrides: ProcessOverrides) -> Result<Process> {
        let mut process = base.clone();
        if overrides.args.is_empty() {
            return Err(invalid(
                "exec",
                "no command given; pass the program and its arguments after the container id",
            ));
        }
        process.set_args(Some(overrides.args));
        process.set_terminal(Some(overrides.tty));
        process.set_console_size(None);
        let mut env = process.env().clone().unwrap_or_default();
        for pair in overrides.env {
            let key =
                pair.split_once('=').map(|(k, _)| k.to_owned()).unwrap_or_else(|| pair.clone());
            env.retain(|existing| existing.split_once('=').map(|(k, _)| k) != Some(key.as_str()));
            env.push(pair);
        }
        process.set_env(Some(env));
        if let Some(cwd) = overrides.cwd {
            process.set_cwd(cwd);
        }
        if let Some((uid, gid)) = overrides.user {
            let mut user = process.user().clone();
            user.set_uid(uid);
            if let Some(gid) = gid {
                user.set_gid(gid);
            }
            process.set_user(user);
        }
        if !overrides.additional_gids.is_empty() {
            let mut user = process.user().clone();
            user.set_additional_gids(Some(overrides.additional_gids));
            process.set_user(user);
        }
        if !overrides.capabilities.is_empty() {
            let mut capabilities = process.capabilities().clone().unwrap_or_default();
            let added: Capabilities = overrides
                .capabilities
                .iter()
                .map(|name| {
                    serde_json::from_value::<Capability>(serde_json::Value::String(name.clone()))
                        .map_err(|_| invalid("--cap", format!("{name} is not a capability")))
                })
                .collect::<Result<_>>()?;
            let extend = |set: &Option<Capabilities>| -> Option<Capabilities> {
                let mut set = set.clone().unwrap_or_default();
                set.extend(added.iter().copied());
                Some(set)
            };
            capabilities.set_bounding(extend(capabilities.bounding()));
            capabilities.set_effective(extend(capabilities.effective()));
            capabilities.set_permitted(extend(capabilities.permitted()));
            // Ambient capabilities need inheritable ones; only extend when the spec has some.
            if capabilities.inheritable().as_ref().is_some_and(|s| !s.is_empty()) {
                capabilities.set_ambient(extend(capabilities.ambient()));
            }
            process.set_capabilities(Some(capabilities));
        }
        if overrides.no_new_privileges {
            process.set_no_new_privileges(Some(true));
        }
        if overrides.apparmor.is_some() {
            process.set_apparmor_profile(overrides.apparmor);
        }
        if overrides.selinux_label.is_some() {
            process.set_selinux_label(overrides.selinux_label);
        }
        Ok(process)
    }
}

impl Runtime {
    /// Runs a new process in a running container.
    pub fn exec(&self, id: &str, options: ExecOptions) -> Result<ExecOutcome> {
        let (state, status) = self.saved_state(id)?;
        match status {
            Status::Running | Status::Created => {}
            Status::Paused if options.ignore_paused => {}
            Status::Paused => {
                return Err(Error::WrongState {
                    id: id.to_owned(),
                    status,
                    action: "exec",
                    expected: "running (resume it, or pass --ignore-paused)",
                })
            }
            _ => {
                return Err(Error::WrongState {
                    id: id.to_owned(),
                    status,
                    action: "exec",
                    expected: "running",
                })
            }
        }
        let process = &options.process;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(invalid("process.args", "is empty; give the program to run"));
        }
        if !process.cwd().is_absolute() {
            return Err(invalid(
                "process.cwd",
                format!("{} is not absolute", process.cwd().display()),
            ));
        }
        let terminal = process.terminal() == Some(true);
        let mut relay_master = None;
        let console = match (terminal, &options.console_socket, options.detach) {
            (false, _, _) => None,
            (true, Some(path), _) => Some(OwnedFd::from(
                UnixStream::connect(path).map_err(io("connect to console socket", path))?,
            )),
            (true, None, true) => {
                return Err(invalid(
                    "--tty",
                    "a detached exec with a terminal needs --console-socket to receive the pty",
                ))
            }
            (true, None, false) => {
                let (ours, theirs) = tty::console_pair()?;
                relay_master = Some(ours);
                Some(theirs)
            }
        };
        let linux = state.config.linux().clone().unwrap_or_default();
        let no_new_privileges = process.no_new_privileges() == Some(true);
        let seccomp = linux
            .seccomp()
            .as_ref()
            .map(|profile| crate::seccomp::compile(profile, no_new_privileges))
            .transpose()?;
        let namespaces = plan::plan_namespaces(&state.config)?;
        let init_pid = state.pid;
        let ns_path = |flag: CloneFlags| {
            PathBuf::from(format!("/proc/{init_pid}/ns/{}", plan::proc_ns_name(flag)))
        };
        let cgroup = self.cgroup_of(&state)?;
        let (parent_channel, child_channel) = Channel::pair()?;
        let preserved = options.preserve_fds;
        let state_json = hook_state_json(&state, Status::Running);
        let listener =
            match (&seccomp, linux.seccomp().as_ref().and_then(|p| p.listener_path().clone())) {
                (Some(filter), Some(path)) if filter.notifies => Some(OwnedFd::from(
                    UnixStream::connect(&path).map_err(io("connect to seccomp listener", &path))?,
                )),
                (Some(filter), None) if filter.notifies => {
                    return Err(invalid(
                        "linux.seccomp.listenerPath",
                        "SCMP_ACT_NOTIFY needs a listener path to send the notify descriptor to",
                    ))
                }
                _ => None,
            };

        let stage_one = match berth_sys::process::fork().map_err(sys("fork"))? {
            Fork::Child => {
                drop(parent_channel);
                let result = (|| -> Result<Infallible> {
                    berth_sys::nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                        .map_err(sys("set the parent-death signal"))?;
                    if namespaces.has_user() {
                        init::join_namespace(
                            &ns_path(CloneFlags::CLONE_NEWUSER),
                            CloneFlags::CLONE_NEWUSER,
                        )?;
                    }
                    child_channel.expect(&Message::Go, "waiting to be placed in the cgroup")?;
                    // pid and time namespaces apply to children only: join, then fork.
                    for flag in [CloneFlags::CLONE_NEWPID, CLONE_NEWTIME] {
                        if namespaces.has(flag) {
                            init::join_namespace(&ns_path(flag), flag)?;
                        }
                    }
                    // As in `create`: the process waits until the pid is sent, so its own
                    // messages on the shared channel cannot overtake it.
                    let (hold_read, hold_write) =
                        berth_sys::nix::unistd::pipe2(berth_sys::nix::fcntl::OFlag::O_CLOEXEC)
                            .map_err(sys("create a pipe"))?;
                    match berth_sys::process::fork_sibling()
                        .map_err(sys("fork the exec process"))?
                    {
                        Fork::Parent(pid) => {
                            child_channel.send(&Message::Pid(pid.as_raw()))?;
                            drop(hold_write);
                            berth_sys::process::exit_now(0)
                        }
                        Fork::Child => {
                            drop(hold_write);
                            let mut byte = [0u8; 1];
                            while let Err(berth_sys::Errno::EINTR) =
                                berth_sys::nix::unistd::read(&hold_read, &mut byte)
                            {
                            }
                        }
                    }
                    berth_sys::nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                        .map_err(sys("set the parent-death signal"))?;
                    // Our pid as the runtime sees it, read before /proc becomes the container's.
                    let host_pid = std::fs::read_link("/proc/self")
                        .ok()
                        .and_then(|p| p.to_string_lossy().parse().ok())
                        .unwrap_or(0);
                    for flag in [
                        CloneFlags::CLONE_NEWIPC,
                        CloneFlags::CLONE_NEWUTS,
                        CloneFlags::CLONE_NEWNET,
                        CloneFlags::CLONE_NEWCGROUP,
                        CloneFlags::CLONE_NEWNS,
                    ] {
                        if namespaces.has(flag) {
                            init::join_namespace(&ns_path(flag), flag)?;
                        }
                    }
                    unistd::setsid().map_err(sys("start a new session"))?;
                    init::apply_process_attributes(&options.process, &state.config)?;
                    if let Some(console) = &console {
                        init::setup_terminal(console, &options.process, false)?;
                    }
                    let program = init::resolve_program(&options.process)?;
                    if !options.detach {
                        // The exec command waits for us: die with it rather than linger.
                        berth_sys::nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                            .map_err(sys("set the parent-death signal"))?;
                    } else {
                        berth_sys::nix::sys::prctl::set_pdeathsig(None)
                            .map_err(sys("clear the parent-death signal"))?;
                    }
                    init::exec_process(
                        &options.process,
                        &program,
                        seccomp.as_ref(),
                        listener.as_ref(),
                        preserved,
                        &init::listener_payload(&state.config, host_pid, &state_json),
                    )
                })();
                let Err(err) = result;
                let _ = child_channel.send(&Message::Error(error_chain(&err)));
                berth_sys::process::exit_now(1)
            }
            Fork::Parent(pid) => pid,
        };
        drop(child_channel);
        drop(console);
        let result = (|| -> Result<Pid> {
            cgroup.add_process_to(stage_one, options.sub_cgroup.as_deref())?;
            parent_channel.send(&Message::Go)?;
            let pid = match parent_channel.recv()? {
                Some(Message::Pid(pid)) => Pid::from_raw(pid),
                Some(Message::Error(text)) => return Err(Error::Setup(text)),
                other => {
                    return Err(Error::Init(format!(
                        "exec's first stage ended unexpectedly ({other:?})"
                    )))
                }
            };
            // The channel closes without a word when execve succeeds.
            match parent_channel.recv() {
                Ok(None) => Ok(pid),
                Ok(Some(Message::Error(text))) => Err(Error::Setup(text)),
                Ok(Some(other)) => Err(Error::Init(format!("unexpected message {other:?}"))),
                Err(err) => Err(err),
            }
        })();
        let _ = berth_sys::process::wait_child(stage_one);
        let pid = match result {
            Ok(pid) => pid,
            Err(err) => {
                let _ = kill(stage_one, Signal::SIGKILL);
                return Err(err);
            }
        };
        if let Some(path) = &options.pid_file {
            write_pid_file(path, pid.as_raw())?;
        }
        if options.detach {
            return Ok(ExecOutcome::Detached(pid.as_raw()));
        }
        let master = match relay_master {
            Some(socket) => Some(tty::receive_master(&socket)?),
            None => None,
        };
        Ok(ExecOutcome::Exited(tty::foreground_wait(pid, master)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_args_env_user_and_add_capabilities() {
        let base: Process = serde_json::from_str(
            r#"{"cwd":"/","args":["sh"],"env":["PATH=/bin","A=1"],"user":{"uid":0,"gid":0},
                "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]}}"#,
        )
        .expect("process");
        let process = ExecOptions::process_from(
            &base,
            ProcessOverrides {
                args: vec!["id".into(), "-u".into()],
                env: vec!["A=2".into(), "B=3".into()],
                cwd: Some("/tmp".into()),
                user: Some((1000, Some(100))),
                capabilities: vec!["CAP_NET_ADMIN".into()],
                tty: true,
                ..ProcessOverrides::default()
            },
        )
        .expect("process");
        assert_eq!(process.args().as_deref(), Some(&["id".to_owned(), "-u".to_owned()][..]));
        assert_eq!(
            process.env().as_deref(),
            Some(&["PATH=/bin".to_owned(), "A=2".to_owned(), "B=3".to_owned()][..])
        );
        assert_eq!((process.user().uid(), process.user().gid()), (1000, 100));
        assert_eq!(process.cwd(), &PathBuf::from("/tmp"));
        assert_eq!(process.terminal(), Some(true));
        let caps = process.capabilities().clone().expect("caps");
        assert!(caps.bounding().as_ref().expect("bounding").contains(&Capability::NetAdmin));
        assert!(caps.ambient().is_none());
        assert!(ExecOptions::process_from(&base, ProcessOverrides::default()).is_err());
    }
}
