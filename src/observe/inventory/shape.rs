//! What a path segment looks like, and how a parameter is named (docs/inventory.md,
//! "How templates are learned").
//!
//! A segment is a parameter by its shape alone when it can only be a value: an integer, a
//! UUID, long hex, an ISO date, a typed id (`cus_8fK2...`, `ord_123`), an opaque token, an
//! e-mail address, or anything longer than [`MAX_LITERAL`]. Anything else is a literal until
//! the cardinality rule of [`super::learn`] says otherwise; whether it reads as a word
//! ([`word_like`]) decides how soon.

/// The shapes, as bits: a parameter position remembers every shape it saw.
pub const INT: u8 = 1;
pub const UUID: u8 = 1 << 1;
pub const HEX: u8 = 1 << 2;
pub const DATE: u8 = 1 << 3;
pub const TYPED_ID: u8 = 1 << 4;
pub const TOKEN: u8 = 1 << 5;
pub const EMAIL: u8 = 1 << 6;
/// Literals turned into a parameter by their number (the cardinality rule).
pub const NAME: u8 = 1 << 7;

/// Segments longer than this are parameters whatever they hold (a literal this long is a
/// slug or a value, and the tree keeps no key longer).
pub const MAX_LITERAL: usize = 64;

/// The shape of a segment that is a value by its looks, or `None` for a literal. A segment
/// with a short extension is classified by its stem (`123.pdf` is an integer).
pub fn shape(seg: &str) -> Option<u8> {
    if seg.len() > MAX_LITERAL {
        return Some(TOKEN);
    }
    if seg.is_empty() {
        return None;
    }
    if let Some(k) = bare_shape(seg) {
        return Some(k);
    }
    match seg.rsplit_once('.') {
        Some((stem, ext))
            if !stem.is_empty()
                && (1..=5).contains(&ext.len())
                && ext.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            bare_shape(stem)
        }
        _ => None,
    }
}

fn bare_shape(s: &str) -> Option<u8> {
    let b = s.as_bytes();
    if b.iter().all(u8::is_ascii_digit) {
        return Some(INT);
    }
    if is_uuid(b) {
        return Some(UUID);
    }
    if is_date(b) {
        return Some(DATE);
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    if b.len() >= 8 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit) {
        return Some(HEX);
    }
    if is_typed_id(s) {
        return Some(TYPED_ID);
    }
    if b.len() >= 16
        && digits >= 2
        && letters >= 2
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        && class_switches(b) >= 2
    {
        return Some(TOKEN);
    }
    if let Some((user, domain)) = s.split_once('@')
        && !user.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
    {
        return Some(EMAIL);
    }
    None
}

/// How often a run of letters turns into a run of digits or back.
fn class_switches(b: &[u8]) -> usize {
    let mut last = None;
    let mut n = 0;
    for c in b {
        let class = if c.is_ascii_digit() {
            Some(true)
        } else if c.is_ascii_alphabetic() {
            Some(false)
        } else {
            None
        };
        if let Some(k) = class {
            if last.is_some_and(|l| l != k) {
                n += 1;
            }
            last = Some(k);
        }
    }
    n
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `2024-01-31`, optionally followed by a time (`T10:00:00Z`).
fn is_date(b: &[u8]) -> bool {
    if b.len() < 10 {
        return false;
    }
    let d = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(d(0..4) && b[4] == b'-' && d(5..7) && b[7] == b'-' && d(8..10)) {
        return false;
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    let day = (b[8] - b'0') * 10 + (b[9] - b'0');
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return false;
    }
    b.len() == 10
        || (b[10] == b'T'
            && b[11..]
                .iter()
                .all(|c| c.is_ascii_digit() || matches!(c, b':' | b'.' | b'Z' | b'+' | b'-')))
}

/// `cus_8fK2abcXYZ`, `ord_123`, `sub_sched_1Nx4`: a lower-case prefix, `_`, and a suffix of
/// three or more letters and digits holding a digit.
fn is_typed_id(s: &str) -> bool {
    let Some((prefix, id)) = s.rsplit_once('_') else {
        return false;
    };
    (2..=16).contains(&prefix.len())
        && prefix.bytes().all(|c| c.is_ascii_lowercase() || c == b'_')
        && prefix.as_bytes()[0].is_ascii_lowercase()
        && id.len() >= 3
        && id.bytes().all(|c| c.is_ascii_alphanumeric())
        && id.bytes().any(|c| c.is_ascii_digit())
}

/// Whether a literal reads as a word (`orders`, `onboardingStatus`, `invoice.pdf`, `v2`,
/// `oauth2`): letters with `-`, `_` or `.` between them and at most two digits at the end,
/// and not the case soup of a random token. The empty segment (a trailing slash) counts as
/// one.
pub fn word_like(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return true;
    }
    if b.len() > 40 || !b[0].is_ascii_alphabetic() {
        return false;
    }
    let body_end = b.len() - b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    if b.len() - body_end > 2 {
        return false;
    }
    let body = &b[..body_end];
    if !body
        .iter()
        .all(|c| c.is_ascii_alphabetic() || matches!(c, b'-' | b'_' | b'.'))
    {
        return false;
    }
    let humps = body
        .windows(2)
        .filter(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase())
        .count();
    humps <= 4
}

/// Words that make poor parameter names (`/api/{id}`, not `/api/{api_id}`).
const POOR_PARENTS: &[&str] = &[
    "api", "apis", "rest", "rpc", "public", "private", "internal", "admin", "static", "assets",
    "www", "web", "app", "by", "id", "ids", "get", "list", "view", "show", "search", "query",
];

/// The name of a parameter at a position whose shapes are `kinds`, after the literal
/// `parent` (when the segment before it is one): `{user_id}` after `users`, else by shape
/// (`{id}`, `{uuid}`, `{hex}`, `{date}`, `{token}`, `{email}`).
pub fn param_name(parent: Option<&str>, kinds: u8) -> String {
    match kinds {
        DATE => return "date".into(),
        TOKEN => return "token".into(),
        EMAIL => return "email".into(),
        _ => {}
    }
    if let Some(p) = parent.and_then(reads_well) {
        return format!("{p}_id");
    }
    match kinds {
        UUID => "uuid".into(),
        HEX => "hex".into(),
        _ => "id".into(),
    }
}

/// The parent segment as the stem of a name (`line-items` gives `line_item`), when it
/// reads as a noun: letters with `-` or `_`, three or more, not a generic word.
fn reads_well(parent: &str) -> Option<String> {
    let b = parent.as_bytes();
    if b.len() < 3
        || b.len() > 32
        || !b[0].is_ascii_alphabetic()
        || !b
            .iter()
            .all(|c| c.is_ascii_alphabetic() || matches!(c, b'-' | b'_'))
        || POOR_PARENTS.contains(&parent.to_ascii_lowercase().as_str())
    {
        return None;
    }
    // snake_case: camelCase humps and dashes become `_`.
    let mut snake = String::with_capacity(b.len() + 4);
    let mut prev_lower = false;
    for &c in b {
        if c == b'-' || c == b'_' {
            if !snake.ends_with('_') {
                snake.push('_');
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower {
            snake.push('_');
        }
        prev_lower = c.is_ascii_lowercase();
        snake.push(c.to_ascii_lowercase() as char);
    }
    let snake = snake.trim_matches('_');
    let (head, last) = match snake.rsplit_once('_') {
        Some((h, l)) => (Some(h), l),
        None => (None, snake),
    };
    let single = singular(last);
    Some(match head {
        Some(h) => format!("{h}_{single}"),
        None => single,
    })
}

/// The singular of a simple English plural (`users`, `categories`, `addresses`, `boxes`,
/// `statuses`); anything else as it is.
pub fn singular(w: &str) -> String {
    let n = w.len();
    if n > 4 && w.ends_with("ies") {
        return format!("{}y", &w[..n - 3]);
    }
    for suffix in ["sses", "shes", "ches", "xes", "zes", "uses"] {
        if n > suffix.len() + 1 && w.ends_with(suffix) {
            return w[..n - 2].to_string();
        }
    }
    if n > 3 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") && !w.ends_with("is") {
        return w[..n - 1].to_string();
    }
    w.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(shape("123"), Some(INT));
        assert_eq!(shape("7"), Some(INT));
        assert_eq!(shape("123.pdf"), Some(INT));
        assert_eq!(shape("3f2c1a9e-7b4d-4c1e-9a2b-0123456789ab"), Some(UUID));
        assert_eq!(shape("3F2C1A9E-7B4D-4C1E-9A2B-0123456789AB"), Some(UUID));
        assert_eq!(shape("deadbeef01"), Some(HEX));
        assert_eq!(shape("9f86d081884c7d659a2feaa0c55ad015"), Some(HEX));
        assert_eq!(shape("2024-01-31"), Some(DATE));
        assert_eq!(shape("2024-01-31T10:00:00Z"), Some(DATE));
        assert_eq!(shape("2024-13-31"), None);
        assert_eq!(shape("cus_8fK2abcXYZ"), Some(TYPED_ID));
        assert_eq!(shape("ord_123"), Some(TYPED_ID));
        assert_eq!(shape("aB3dE5fG7hJ9kL1m"), Some(TOKEN));
        assert_eq!(shape("alice@example.com"), Some(EMAIL));
        assert_eq!(shape(&"a".repeat(65)), Some(TOKEN));
        // Literals.
        for lit in [
            "api",
            "v1",
            "v2",
            "oauth2",
            "orders",
            "onboardingStatus",
            "invoice.pdf",
            "user_profile",
            "facade",
            "how-to-use-api-v2-guide",
            "",
        ] {
            assert_eq!(shape(lit), None, "{lit}");
        }
    }

    #[test]
    fn words() {
        for w in [
            "orders",
            "v1",
            "v10",
            "onboardingStatus",
            "invoice.pdf",
            "line-items",
            "",
        ] {
            assert!(word_like(w), "{w}");
        }
        for w in ["aB3dE5fG7hJ9", "x7kp2", "v123", "123abc", "qWeRtYuIoPaSdF"] {
            assert!(!word_like(w), "{w}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(param_name(Some("users"), INT), "user_id");
        assert_eq!(param_name(Some("tables"), UUID), "table_id");
        assert_eq!(param_name(Some("categories"), INT), "category_id");
        assert_eq!(param_name(Some("addresses"), INT), "address_id");
        assert_eq!(param_name(Some("statuses"), INT), "status_id");
        assert_eq!(param_name(Some("line-items"), INT), "line_item_id");
        assert_eq!(param_name(Some("lineItems"), INT), "line_item_id");
        assert_eq!(param_name(Some("api"), INT), "id");
        assert_eq!(param_name(Some("v1"), UUID), "uuid");
        assert_eq!(param_name(None, HEX), "hex");
        assert_eq!(param_name(Some("reports"), DATE), "date");
        assert_eq!(param_name(Some("reset"), TOKEN), "token");
        assert_eq!(param_name(None, INT | UUID), "id");
    }
}
