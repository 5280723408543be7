//! CronJob schedules: the five-field cron syntax Kubernetes accepts (minute, hour, day of
//! month, month, day of week; lists, ranges, steps, `*`, `?`, month and day names) and the
//! `@yearly`, `@monthly`, `@weekly`, `@daily`, `@midnight` and `@hourly` macros, with an
//! optional `CRON_TZ=` or `TZ=` prefix (only UTC is known here). Parsing validates
//! `spec.schedule`; `next_after` gives the CronJob controller its next run.

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether day of month / day of week were `*` (cron's "either matches" rule applies
    /// only when both are restricted).
    any_day: bool,
    any_weekday: bool,
}

const MONTHS: [&str; 12] =
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let mut text = text.trim();
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = text.strip_prefix(prefix) {
                let (zone, rest) =
                    rest.split_once(' ').ok_or("a time zone needs a schedule after it")?;
                if zone != "UTC" && zone != "Etc/UTC" {
                    return Err(format!("unknown time zone {zone}"));
                }
                text = rest.trim();
            }
        }
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!("unrecognized descriptor: {other}"))
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!("expected exactly 5 fields, found {}: {text:?}", fields.len()));
        }
        let star = |f: &str| f == "*" || f == "?";
        Ok(Schedule {
            minutes: field(fields[0], 0, 59, &[])?,
            hours: field(fields[1], 0, 23, &[])?,
            days: field(fields[2], 1, 31, &[])?,
            months: field(fields[3], 1, 12, &MONTHS)?,
            // 7 is Sunday too.
            weekdays: {
                let bits = field(fields[4], 0, 7, &WEEKDAYS)?;
                (bits | (bits >> 7)) & 0x7f
            },
            any_day: star(fields[2]),
            any_weekday: star(fields[4]),
        })
    }

    /// The first minute strictly after `after` (seconds since the epoch, UTC) that the
    /// schedule names, within the next eight years.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let mut minute = after.div_euclid(60) + 1;
        let limit = minute + 8 * 366 * 24 * 60;
        while minute < limit {
            let (days, rest) = (minute.div_euclid(1440), minute.rem_euclid(1440));
            let (_, month, day) = berth_stdx::time::civil_from_days(days);
            let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
            let day_ok = match (self.any_day, self.any_weekday) {
                (false, false) => bit(self.days, day) || bit(self.weekdays, weekday),
                _ => bit(self.days, day) && bit(self.weekdays, weekday),
            };
            if !bit(self.months, month) || !day_ok {
                minute = (days + 1) * 1440;
                continue;
            }
            let (hour, min) = ((rest / 60) as u32, (rest % 60) as u32);
            if !bit(self.hours, hour) {
                minute = days * 1440 + (i64::from(hour) + 1) * 60;
                continue;
            }
            if bit(self.minutes, min) {
                return Some(minute * 60);
            }
            minute += 1;
        }
        None
    }
}

fn bit(set: u64, n: u32) -> bool {
    set & (1 << n) != 0
}

fn field(text: &str, low: u32, high: u32, names: &[&str]) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| format!("failed to parse int from {step}: invalid syntax"))?;
                if step == 0 {
                    return Err(format!("step of range should be a positive number: {part}"));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let value = |v: &str| -> Result<u32, String> {
            if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
                return Ok(i as u32 + low);
            }
            v.parse().map_err(|_| format!("failed to parse int from {v}: invalid syntax"))
        };
        let (start, end) = match range {
            "*" | "?" => (low, high),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // "5/15" means from 5 to the end by 15.
                None if step > 1 => (value(range)?, high),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        if start < low {
            return Err(format!("beginning of range ({start}) below minimum ({low}): {part}"));
        }
        if end > high {
            return Err(format!("end of range ({end}) above maximum ({high}): {part}"));
        }
        if start > end {
            return Err(format!(
                "beginning of range ({start}) beyond end of range ({end}): {part}"
            ));
        }
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            match v.checked_add(step) {
                Some(next) => v = next,
                None => break,
            }
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    // 2026-11-23 (a Monday) 10:07:30 UTC
    const NOW: i64 = 20_780 * DAY + 10 * 3600 + 7 * 60 + 30;

    #[test]
    fn next_runs() {
        let next = |s: &str| Schedule::parse(s).unwrap().next_after(NOW).unwrap();
        assert_eq!(next("*/5 * * * *"), NOW - 7 * 60 - 30 + 10 * 60);
        assert_eq!(next("@hourly"), NOW - 7 * 60 - 30 + 3600);
        assert_eq!(next("0 0 * * *"), 20_781 * DAY);
        assert_eq!(next("30 9 * * mon"), 20_787 * DAY + 9 * 3600 + 30 * 60);
        assert_eq!(next("0 12 1 jan *"), civil_days(2027, 1, 1) * DAY + 12 * 3600);
        assert_eq!(next("0 0 29 2 *"), civil_days(2028, 2, 29) * DAY);
        // Restricted day of month and day of week: either matches (Sunday 2026-11-29).
        assert_eq!(next("0 0 1 * 7"), 20_786 * DAY);
        assert_eq!(next("TZ=UTC 15-45/15 10 * * *"), NOW - 7 * 60 - 30 + 15 * 60);
        // A step past every value names the first only (and does not overflow).
        assert_eq!(next("*/4294967295 * * * *"), NOW - 7 * 60 - 30 + 3600);
    }

    fn civil_days(y: i64, m: u32, d: u32) -> i64 {
        berth_stdx::time::days_from_civil(y, m, d)
    }

    #[test]
    fn bad_schedules_are_named() {
        for (text, needle) in [
            ("* * * *", "expected exactly 5 fields"),
            ("61 * * * *", "above maximum (59)"),
            ("* * 0 * *", "below minimum (1)"),
            ("*/0 * * * *", "positive"),
            ("*/99999999999 * * * *", "failed to parse int"),
            ("x * * * *", "failed to parse int from x"),
            ("5-1 * * * *", "beyond end of range"),
            ("@fortnightly", "unrecognized descriptor"),
            ("TZ=Mars/Olympus * * * * *", "unknown time zone"),
        ] {
            let err = Schedule::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
