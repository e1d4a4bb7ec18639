//! Percentages: written with at most two decimals, held as basis points (percent × 100), so
//! that thresholds are integers and `25.5` is exactly 2550.

/// A percentage (0 to 100, at most two decimals) in basis points; `None` otherwise.
pub fn percent_to_bp(f: f64) -> Option<u32> {
    if !(0.0..=100.0).contains(&f) {
        return None;
    }
    let scaled = f * 100.0;
    let rounded = scaled.round();
    ((scaled - rounded).abs() < 1e-9).then_some(rounded as u32)
}

/// A percentage as written (in the routes file, or to `strangler shift`): plain decimals only,
/// `25`, `12.5`, `0.05`, from 0 to 100 with at most two decimals. Every other way YAML or a
/// number parser might read a number is refused with the form named: `0x10` is 16 to one
/// tool and an error to another, and `010` is 10 in YAML 1.2 but 8 in YAML 1.1.
pub fn parse_percent(text: &str) -> Result<u32, String> {
    const ALLOWED: &str =
        "allowed: a plain decimal number from 0 to 100 with at most two decimals, like 25 or 12.5";
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let form = if lower.starts_with("0x") {
        Some("a hexadecimal number")
    } else if lower.starts_with("0o") {
        Some("an octal number")
    } else if lower.starts_with("0b") {
        Some("a binary number")
    } else if t.contains('_') {
        Some("digits with separators")
    } else if t.starts_with('+') || t.starts_with('-') {
        Some("a sign")
    } else if lower.contains('e') && lower.chars().any(|c| c.is_ascii_digit()) {
        Some("an exponent")
    } else if t.len() > 1 && t.starts_with('0') && !t.starts_with("0.") {
        Some("a leading zero (YAML 1.1 tools read 010 as the octal 8)")
    } else if t.starts_with('.') || t.ends_with('.') {
        Some("a number without digits on both sides of its point")
    } else {
        None
    };
    if let Some(form) = form {
        return Err(format!("found {t} ({form}); {ALLOWED}"));
    }
    let plain = !t.is_empty()
        && t.chars().all(|c| c.is_ascii_digit() || c == '.')
        && t.matches('.').count() <= 1;
    let bp = plain
        .then(|| t.parse::<f64>().ok())
        .flatten()
        .and_then(percent_to_bp);
    bp.ok_or_else(|| format!("found {t}; {ALLOWED}"))
}

/// Formats basis points as a percentage without trailing zeros: 2550 → "25.5".
pub fn format_percent(bp: u32) -> String {
    if bp.is_multiple_of(100) {
        (bp / 100).to_string()
    } else if bp.is_multiple_of(10) {
        format!("{}.{}", bp / 100, (bp % 100) / 10)
    } else {
        format!("{}.{:02}", bp / 100, bp % 100)
    }
}

/// Basis points as a JSON number (`25`, `25.5`).
pub fn percent_json(bp: u32) -> serde_json::Value {
    serde_json::from_str(&format_percent(bp)).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_decimals_are_percentages() {
        assert_eq!(parse_percent("25"), Ok(2500));
        assert_eq!(parse_percent("12.5"), Ok(1250));
        assert_eq!(parse_percent("0.05"), Ok(5));
        assert_eq!(parse_percent("0"), Ok(0));
        assert_eq!(parse_percent("100"), Ok(10_000));
        for (bad, form) in [
            ("0x10", "hexadecimal"),
            ("0o10", "octal"),
            ("0b11", "binary"),
            ("1_0", "separators"),
            ("010", "leading zero"),
            ("-0", "sign"),
            ("+5", "sign"),
            ("1e1", "exponent"),
            (".5", "point"),
        ] {
            let e = parse_percent(bad).unwrap_err();
            assert!(e.contains(form), "{bad}: {e}");
        }
        assert!(parse_percent("100.5").is_err());
        assert!(parse_percent("12.345").is_err());
        assert!(parse_percent("ten").is_err());
    }

    #[test]
    fn percent_formats() {
        assert_eq!(format_percent(2500), "25");
        assert_eq!(format_percent(2550), "25.5");
        assert_eq!(format_percent(2505), "25.05");
        assert_eq!(percent_json(2550), serde_json::json!(25.5));
    }
}
