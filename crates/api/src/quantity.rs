//! Resource quantities as Kubernetes writes them (`100m`, `0.5`, `64Mi`, `1G`, `2e3`),
//! in thousandths of the unit (millicores for CPU, millibytes for memory), as integers.

/// A quantity in thousandths of its unit; `None` when it is not a quantity.
pub fn parse_milli(text: &str) -> Option<i128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() {
        return None;
    }
    let (multiplier, divisor): (i128, i128) = match suffix {
        "" => (1000, 1),
        "n" => (1, 1_000_000),
        "u" => (1, 1000),
        "m" => (1, 1),
        "k" => (1000 * 1000, 1),
        "M" => (1000 * 1_000_000, 1),
        "G" => (1000 * 1_000_000_000, 1),
        "T" => (1000 * 1_000_000_000_000, 1),
        "P" => (1000 * 1_000_000_000_000_000, 1),
        "E" => (1000 * 1_000_000_000_000_000_000, 1),
        "Ki" => (1000 << 10, 1),
        "Mi" => (1000 << 20, 1),
        "Gi" => (1000 << 30, 1),
        "Ti" => (1000 << 40, 1),
        "Pi" => (1000 << 50, 1),
        "Ei" => (1000 << 60, 1),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: u32 = exponent[1..].parse().ok()?;
            (1000 * 10i128.checked_pow(power)?, 1)
        }
        _ => return None,
    };
    // Decimal numbers exactly: whole and fractional digits apart.
    let negative = number.starts_with('-');
    let digits = number.trim_start_matches(['+', '-']);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let whole: i128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let scale = 10i128.checked_pow(fraction.len() as u32)?;
    let fraction: i128 = if fraction.is_empty() { 0 } else { fraction.parse().ok()? };
    let scaled = whole.checked_mul(scale)?.checked_add(fraction)?.checked_mul(multiplier)?;
    // Round up, as Kubernetes does for requests.
    let unit = scale.checked_mul(divisor)?;
    let value = scaled.checked_add(unit - 1)? / unit;
    Some(if negative { -value } else { value })
}

/// A quantity in thousandths as Kubernetes prints it: `500m`, `2`, and for bytes
/// (`binary`) the largest exact power-of-two suffix (`1536Mi`).
pub fn format_milli(milli: i128, binary: bool) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let whole = milli / 1000;
    if binary && whole != 0 {
        for (shift, suffix) in
            [(60, "Ei"), (50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")]
        {
            let unit = 1i128 << shift;
            if whole % unit == 0 {
                return format!("{}{suffix}", whole / unit);
            }
        }
    }
    whole.to_string()
}

#[cfg(test)]
mod tests {
    use super::{format_milli, parse_milli};

    #[test]
    fn printed_as_kubernetes_prints_them() {
        assert_eq!(format_milli(500, false), "500m");
        assert_eq!(format_milli(2000, false), "2");
        assert_eq!(format_milli(parse_milli("1.5Gi").unwrap_or(0), true), "1536Mi");
        assert_eq!(format_milli(parse_milli("1000").unwrap_or(0), true), "1000");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("2"), Some(2000));
        assert_eq!(parse_milli("64Mi"), Some(64 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("1G"), Some(1_000_000_000_000));
        assert_eq!(parse_milli("1.5Gi"), Some(1536 * 1024 * 1024 * 1000));
        assert_eq!(parse_milli("2e3"), Some(2_000_000));
        assert_eq!(parse_milli("1n"), Some(1), "rounded up to a thousandth");
        assert_eq!(parse_milli("abc"), None);
        assert_eq!(parse_milli("1Qi"), None);
    }
}
