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
    fn percent_formats() {
        assert_eq!(format_percent(2500), "25");
        assert_eq!(format_percent(2550), "25.5");
        assert_eq!(format_percent(2505), "25.05");
        assert_eq!(percent_json(2550), serde_json::json!(25.5));
    }
}
