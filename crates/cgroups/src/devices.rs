//! Device access rules, from `linux.resources.devices`.

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::{Error, Result};

/// One device cgroup rule: allow or deny `access` (a subset of `rwm`) to matching devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    /// `a` (all), `c` (char) or `b` (block).
    pub kind: char,
    /// `None` matches every major or minor number.
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

impl DeviceRule {
    /// A rule from its OCI form, checking type and access letters.
    pub fn from_oci(rule: &LinuxDeviceCgroup) -> Result<DeviceRule> {
        let kind = match rule.typ() {
            None | Some(LinuxDeviceType::A) => 'a',
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 'c',
            Some(LinuxDeviceType::B) => 'b',
            Some(other) => {
                return Err(Error::InvalidValue {
                    field: "devices.type",
                    reason: format!(
                        "device type {other:?} cannot be used in a device rule; use a, c or b"
                    ),
                })
            }
        };
        let access = rule.access().clone().unwrap_or_else(|| "rwm".to_owned());
        if access.is_empty() || !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(Error::InvalidValue {
                field: "devices.access",
                reason: format!("{access:?} is not a combination of r, w and m"),
            });
        }
        for (name, number) in [("devices.major", rule.major()), ("devices.minor", rule.minor())] {
            if matches!(number, Some(n) if n < -1) {
                return Err(Error::InvalidValue {
                    field: name,
                    reason: format!("{} is negative", number.unwrap_or(0)),
                });
            }
        }
        let wildcard = |n: Option<i64>| n.filter(|n| *n >= 0);
        Ok(DeviceRule {
            allow: rule.allow(),
            kind,
            major: wildcard(rule.major()),
            minor: wildcard(rule.minor()),
            access,
        })
    }

    /// The line written to `devices.allow` or `devices.deny`, e.g. `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        if self.kind == 'a' {
            return "a".to_owned();
        }
        let number = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_else(|| "*".to_owned());
        format!("{} {}:{} {}", self.kind, number(self.major), number(self.minor), self.access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: &str) -> Result<DeviceRule> {
        DeviceRule::from_oci(&serde_json::from_str(json).expect("json"))
    }

    #[test]
    fn v1_lines() {
        assert_eq!(rule(r#"{"allow":false,"access":"rwm"}"#).expect("rule").v1_line(), "a");
        assert_eq!(
            rule(r#"{"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}"#)
                .expect("rule")
                .v1_line(),
            "c 1:3 rwm"
        );
        assert_eq!(
            rule(r#"{"allow":true,"type":"c","major":136,"access":"rw"}"#).expect("rule").v1_line(),
            "c 136:* rw"
        );
    }

    #[test]
    fn bad_access_is_refused() {
        assert!(rule(r#"{"allow":true,"type":"c","major":1,"minor":3,"access":"rwx"}"#).is_err());
        assert!(rule(r#"{"allow":true,"type":"p","major":1,"minor":3,"access":"r"}"#).is_err());
        assert!(rule(r#"{"allow":true,"type":"c","major":-5,"minor":3,"access":"r"}"#).is_err());
    }
}

/// Device access as the kernel hands it to a cgroup device program.
pub mod bpf {
    use berth_sys::bpf::Insn;

    use super::DeviceRule;

    const TYPE_BLOCK: i32 = 1;
    const TYPE_CHAR: i32 = 2;
    const ACCESS_MKNOD: i32 = 1;
    const ACCESS_READ: i32 = 2;
    const ACCESS_WRITE: i32 = 4;

    const LDX_W: u8 = 0x61; // r_dst = *(u32 *)(r_src + off)
    const AND_K: u8 = 0x57; // r_dst &= imm
    const RSH_K: u8 = 0x77; // r_dst >>= imm
    const MOV_K: u8 = 0xb7; // r_dst = imm
    const MOV_X: u8 = 0xbf; // r_dst = r_src
    const JNE_K: u8 = 0x55; // if r_dst != imm goto +off
    const JEQ_K: u8 = 0x15; // if r_dst == imm goto +off
    const EXIT: u8 = 0x95; // return r0

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn { code, regs: (src << 4) | dst, off, imm }
    }

    fn access_mask(access: &str) -> i32 {
        access.chars().fold(0, |mask, c| {
            mask | match c {
                'm' => ACCESS_MKNOD,
                'r' => ACCESS_READ,
                'w' => ACCESS_WRITE,
                _ => 0,
            }
        })
    }

    /// A program that decides like the v1 device controller would with these rules
    /// applied in order: the last rule that matches a request decides, nothing matching
    /// denies. Registers: r2 type, r3 access, r4 major, r5 minor.
    pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
        let mut program = vec![
            insn(LDX_W, 2, 1, 0, 0),
            insn(AND_K, 2, 0, 0, 0xffff),
            insn(LDX_W, 3, 1, 0, 0),
            insn(RSH_K, 3, 0, 0, 16),
            insn(LDX_W, 4, 1, 4, 0),
            insn(LDX_W, 5, 1, 8, 0),
        ];
        for rule in rules.iter().rev() {
            // Each condition jumps past the block when it does not hold.
            let mut conditions: Vec<Insn> = Vec::new();
            match rule.kind {
                'b' => conditions.push(insn(JNE_K, 2, 0, 0, TYPE_BLOCK)),
                'c' => conditions.push(insn(JNE_K, 2, 0, 0, TYPE_CHAR)),
                _ => {}
            }
            // An allow rule covers a request it grants all of; a deny rule one it shares any
            // access with (opening read-write a device whose writes are denied is denied).
            let mask = access_mask(&rule.access);
            if mask != ACCESS_MKNOD | ACCESS_READ | ACCESS_WRITE {
                conditions.push(insn(MOV_X, 6, 3, 0, 0));
                if rule.allow {
                    conditions.push(insn(AND_K, 6, 0, 0, !mask & 7));
                    conditions.push(insn(JNE_K, 6, 0, 0, 0));
                } else {
                    conditions.push(insn(AND_K, 6, 0, 0, mask));
                    conditions.push(insn(JEQ_K, 6, 0, 0, 0));
                }
            }
            if let (Some(major), true) = (rule.major, rule.kind != 'a') {
                conditions.push(insn(JNE_K, 4, 0, 0, major as i32));
            }
            if let (Some(minor), true) = (rule.minor, rule.kind != 'a') {
                conditions.push(insn(JNE_K, 5, 0, 0, minor as i32));
            }
            let unconditional = conditions.is_empty();
            conditions.push(insn(MOV_K, 0, 0, 0, i32::from(rule.allow)));
            conditions.push(insn(EXIT, 0, 0, 0, 0));
            let length = conditions.len();
            for (index, instruction) in conditions.iter_mut().enumerate() {
                if instruction.code == JNE_K || instruction.code == JEQ_K {
                    instruction.off = (length - index - 1) as i16;
                }
            }
            program.extend(conditions);
            if unconditional {
                // Everything after would be unreachable, which the verifier refuses.
                return program;
            }
        }
        program.push(insn(MOV_K, 0, 0, 0, 0));
        program.push(insn(EXIT, 0, 0, 0, 0));
        program
    }

    /// Runs a program of the instructions above on one request: the executable statement of
    /// what the program means, for the tests.
    #[cfg(test)]
    pub fn evaluate(program: &[Insn], kind: char, access: &str, major: u32, minor: u32) -> bool {
        let kind = if kind == 'b' { TYPE_BLOCK } else { TYPE_CHAR } as u64;
        let context =
            [(access_mask(access) as u64) << 16 | kind, u64::from(major), u64::from(minor)];
        let mut registers = [0u64; 11];
        let mut pc = 0usize;
        while let Some(instruction) = program.get(pc) {
            let dst = usize::from(instruction.regs & 0xf);
            let src = usize::from(instruction.regs >> 4);
            let imm = instruction.imm as i64 as u64;
            match instruction.code {
                LDX_W => registers[dst] = context[(instruction.off / 4) as usize],
                AND_K => registers[dst] &= imm,
                RSH_K => registers[dst] >>= imm,
                MOV_K => registers[dst] = imm,
                MOV_X => registers[dst] = registers[src],
                JNE_K if registers[dst] != imm => pc += instruction.off as usize,
                JNE_K => {}
                JEQ_K if registers[dst] == imm => pc += instruction.off as usize,
                JEQ_K => {}
                EXIT => return registers[0] == 1,
                _ => return false,
            }
            pc += 1;
        }
        false
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn rule(
            allow: bool,
            kind: char,
            major: Option<i64>,
            minor: Option<i64>,
            access: &str,
        ) -> DeviceRule {
            DeviceRule { allow, kind, major, minor, access: access.to_owned() }
        }

        #[test]
        fn deny_all_then_allow_some_like_a_container() {
            let program = program(&[
                rule(false, 'a', None, None, "rwm"),
                rule(true, 'c', None, None, "m"),
                rule(true, 'c', Some(1), Some(3), "rwm"),
                rule(true, 'c', Some(136), None, "rw"),
            ]);
            assert!(evaluate(&program, 'c', "rw", 1, 3), "/dev/null");
            assert!(!evaluate(&program, 'c', "r", 1, 5), "/dev/zero is not allowed");
            assert!(evaluate(&program, 'c', "m", 8, 0), "mknod of any char device");
            assert!(!evaluate(&program, 'b', "m", 8, 0), "but not of block devices");
            assert!(evaluate(&program, 'c', "w", 136, 4), "any pty");
            assert!(
                !evaluate(&program, 'c', "rwm", 136, 4),
                "mknod of a pty is only granted by the char-wide m rule, not with rw"
            );
            assert!(!evaluate(&program, 'b', "r", 8, 0), "disks are denied");
        }

        #[test]
        fn later_rules_override_earlier_ones() {
            let program = program(&[
                rule(true, 'a', None, None, "rwm"),
                rule(false, 'c', Some(1), Some(5), "w"),
            ]);
            assert!(evaluate(&program, 'c', "r", 1, 5), "reading /dev/zero stays allowed");
            assert!(!evaluate(&program, 'c', "w", 1, 5), "writing it is denied");
            assert!(!evaluate(&program, 'c', "rw", 1, 5), "a request with a denied part is denied");
            assert!(evaluate(&program, 'b', "rwm", 8, 0));
        }

        #[test]
        fn an_unconditional_rule_ends_the_program() {
            let rules = [
                rule(true, 'c', Some(1), Some(3), "rwm"),
                rule(false, 'a', None, None, "rwm"),
                rule(true, 'c', Some(1), Some(5), "r"),
            ];
            let program = program(&rules);
            // The last instruction is the deny-all's exit: nothing unreachable follows.
            assert_eq!(program.last().map(|i| i.code), Some(EXIT));
            assert_eq!(program.iter().filter(|i| i.code == EXIT).count(), 2);
            assert!(evaluate(&program, 'c', "r", 1, 5));
            assert!(
                !evaluate(&program, 'c', "r", 1, 3),
                "the later deny-all overrides the earlier allow"
            );
        }

        #[test]
        fn no_rules_deny_everything() {
            assert!(!evaluate(&program(&[]), 'c', "r", 1, 3));
        }
    }
}
