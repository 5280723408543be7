//! Turning `linux.seccomp` into a loaded BPF filter, through libseccomp.
//!
//! The filter is compiled by the runtime command before it forks, so a profile error is
//! reported by `create` itself, and the container's init only loads the compiled result.

use std::os::fd::OwnedFd;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterAttr, ScmpFilterContext,
    ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};

use crate::error::{Error, Result};

/// A compiled filter, ready to load.
pub struct Filter {
    context: ScmpFilterContext,
    /// True when some rule uses `SCMP_ACT_NOTIFY`: a listener gets the notify descriptor.
    pub notifies: bool,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter").field("notifies", &self.notifies).finish()
    }
}

fn action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    default_errno: Option<u32>,
) -> Result<ScmpAction> {
    let errno = errno_ret.or(default_errno).unwrap_or(libc_eperm());
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno as i32),
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(
            u16::try_from(errno)
                .map_err(|_| Error::Seccomp(format!("trace value {errno} does not fit 16 bits")))?,
        ),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
    })
}

fn libc_eperm() -> u32 {
    berth_sys::libc::EPERM as u32
}

fn operator(arg: &oci_spec::runtime::LinuxSeccompArg) -> ScmpArgCompare {
    let index = arg.index() as u32;
    match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => {
            ScmpArgCompare::new(index, ScmpCompareOp::NotEqual, arg.value())
        }
        LinuxSeccompOperator::ScmpCmpLt => {
            ScmpArgCompare::new(index, ScmpCompareOp::Less, arg.value())
        }
        LinuxSeccompOperator::ScmpCmpLe => {
            ScmpArgCompare::new(index, ScmpCompareOp::LessOrEqual, arg.value())
        }
        LinuxSeccompOperator::ScmpCmpEq => {
            ScmpArgCompare::new(index, ScmpCompareOp::Equal, arg.value())
        }
        LinuxSeccompOperator::ScmpCmpGe => {
            ScmpArgCompare::new(index, ScmpCompareOp::GreaterEqual, arg.value())
        }
        LinuxSeccompOperator::ScmpCmpGt => {
            ScmpArgCompare::new(index, ScmpCompareOp::Greater, arg.value())
        }
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpArgCompare::new(
            index,
            ScmpCompareOp::MaskedEqual(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    }
}

fn arch(arch: &oci_spec::runtime::Arch) -> Result<ScmpArch> {
    // The spec's names (SCMP_ARCH_X86_64, ...) are libseccomp's.
    let name = serde_json::to_value(arch)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    name.parse()
        .map_err(|_| Error::Seccomp(format!("architecture {name} is not known to libseccomp")))
}

/// Compiles a profile. `no_new_privileges` tells libseccomp whether to set the flag itself.
pub fn compile(profile: &LinuxSeccomp, no_new_privileges: bool) -> Result<Filter> {
    let seccomp_error = |what: &str| {
        let what = what.to_owned();
        move |err: libseccomp::error::SeccompError| Error::Seccomp(format!("{what}: {err}"))
    };
    let default = action(profile.default_action(), profile.default_errno_ret(), None)?;
    let mut context =
        ScmpFilterContext::new(default).map_err(seccomp_error("cannot create a filter"))?;
    // The runtime decides about no_new_privs itself (process.noNewPrivileges).
    context.set_ctl_nnp(no_new_privileges).map_err(seccomp_error("cannot configure the filter"))?;
    for flag in profile.flags().iter().flatten() {
        let result = match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => context.set_ctl_log(true).map(drop),
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => context.set_ctl_tsync(true).map(drop),
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                context.set_ctl_ssb(true).map(drop)
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                context.set_filter_attr(ScmpFilterAttr::CtlWaitkill, 1).map(drop)
            }
        };
        result.map_err(seccomp_error(&format!(
            "flag {flag:?} is not supported by this libseccomp"
        )))?;
    }
    for architecture in profile.architectures().iter().flatten() {
        let architecture = arch(architecture)?;
        match context.add_arch(architecture) {
            Ok(_) => {}
            Err(err) => {
                return Err(Error::Seccomp(format!(
                    "cannot add architecture {architecture:?}: {err}"
                )))
            }
        }
    }
    let mut notifies = profile.default_action() == LinuxSeccompAction::ScmpActNotify;
    for (index, rule) in profile.syscalls().iter().flatten().enumerate() {
        let rule_action = action(rule.action(), rule.errno_ret(), profile.default_errno_ret())?;
        notifies |= rule.action() == LinuxSeccompAction::ScmpActNotify;
        if rule_action == default {
            // libseccomp refuses rules that repeat the default action; they change nothing.
            continue;
        }
        add_rule(&mut context, index, rule, rule_action)?;
    }
    Ok(Filter { context, notifies })
}

fn add_rule(
    context: &mut ScmpFilterContext,
    index: usize,
    rule: &LinuxSyscall,
    action: ScmpAction,
) -> Result<()> {
    let conditions: Vec<ScmpArgCompare> = rule.args().iter().flatten().map(operator).collect();
    let mut indexes: Vec<usize> = rule.args().iter().flatten().map(|a| a.index()).collect();
    indexes.sort_unstable();
    let repeated_index = indexes.windows(2).any(|pair| pair[0] == pair[1]);
    for arg in rule.args().iter().flatten() {
        if arg.index() > 5 {
            return Err(Error::Seccomp(format!(
                "syscalls[{index}]: argument index {} is above 5",
                arg.index()
            )));
        }
    }
    for name in rule.names() {
        // Profiles list syscalls of newer kernels or other architectures: skip unknown names,
        // as runc and crun do.
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            tracing::debug!(syscall = name.as_str(), "unknown syscall in seccomp profile skipped");
            continue;
        };
        let result = if conditions.is_empty() {
            context.add_rule(action, syscall)
        } else if repeated_index {
            // Two conditions on one argument cannot both hold in one rule: each is a rule of its
            // own, so any of them matching triggers the action.
            conditions
                .iter()
                .try_for_each(|condition| {
                    context.add_rule_conditional(action, syscall, &[*condition]).map(drop)
                })
                .map(|_| context as &mut _)
        } else {
            context.add_rule_conditional(action, syscall, &conditions)
        };
        result.map_err(|err| {
            Error::Seccomp(format!("syscalls[{index}]: rule for {name} refused: {err}"))
        })?;
    }
    Ok(())
}

impl Filter {
    /// Loads the filter into the calling process. Returns the notify descriptor when the
    /// profile uses `SCMP_ACT_NOTIFY`.
    pub fn load(&self) -> Result<Option<OwnedFd>> {
        self.context
            .load()
            .map_err(|err| Error::Seccomp(format!("cannot load the filter: {err}")))?;
        if !self.notifies {
            return Ok(None);
        }
        let fd = self
            .context
            .get_notify_fd()
            .map_err(|err| Error::Seccomp(format!("no notify descriptor: {err}")))?;
        // libseccomp keeps the descriptor in its context; take a duplicate of our own.
        berth_sys::process::dup_raw_fd(fd)
            .map(Some)
            .map_err(|err| Error::Seccomp(format!("notify descriptor: {err}")))
    }
}

/// Sends the seccomp notify descriptor with the container process state to a listener
/// (`linux.seccomp.listenerPath`), as the spec's "containerProcessState" describes.
pub fn send_to_listener(listener: &OwnedFd, notify_fd: &OwnedFd, state_json: &[u8]) -> Result<()> {
    use berth_sys::nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let fds = [notify_fd.as_raw_fd()];
    let control = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(state_json)];
    sendmsg::<()>(listener.as_raw_fd(), &iov, &control, MsgFlags::empty(), None).map_err(
        |err| Error::Seccomp(format!("cannot send the notify descriptor to the listener: {err}")),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("profile json")
    }

    #[test]
    fn compiles_actions_args_and_skips_unknown_syscalls() {
        let filter = compile(
            &profile(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
                    "syscalls":[
                      {"names":["mkdir","no_such_syscall"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                      {"names":["personality"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"},{"index":0,"value":131072,"op":"SCMP_CMP_EQ"}]},
                      {"names":["clone"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}]},
                      {"names":["getpid"],"action":"SCMP_ACT_ALLOW"}
                    ]}"#,
            ),
            false,
        )
        .expect("compile");
        assert!(!filter.notifies);
    }

    #[test]
    fn notify_is_detected_and_bad_arguments_refused() {
        let filter = compile(&profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#), true).expect("compile");
        assert!(filter.notifies);
        let err = compile(&profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#), true)
            .expect_err("index 9");
        assert!(err.to_string().contains("above 5"), "{err}");
    }
}
