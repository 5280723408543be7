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
