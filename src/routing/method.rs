//! HTTP methods as the gateway counts and matches them: the nine methods with a name of
//! their own (indexes into [`METHODS`]) and everything else as `OTHER`.

use http::Method;

/// Method label values; anything else is `OTHER` (index [`METHOD_OTHER`]).
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "OTHER",
];
/// Index of `OTHER` in [`METHODS`].
pub const METHOD_OTHER: usize = 9;

/// Index of a method in [`METHODS`].
#[inline]
pub fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::CONNECT => 8,
        _ => METHOD_OTHER,
    }
}

/// The methods a rule takes: a bit per named method, a list for the rest.
#[derive(Debug, Clone)]
pub struct MethodSet {
    mask: u16,
    others: Vec<Method>,
}

impl MethodSet {
    pub fn new(methods: &[Method]) -> MethodSet {
        let mut set = MethodSet {
            mask: 0,
            others: Vec::new(),
        };
        for m in methods {
            match method_index(m) {
                i if i < METHOD_OTHER => set.mask |= 1 << i,
                _ => set.others.push(m.clone()),
            }
        }
        set
    }

    #[inline]
    pub fn contains(&self, m: &Method) -> bool {
        match method_index(m) {
            i if i < METHOD_OTHER => self.mask & (1 << i) != 0,
            _ => self.others.contains(m),
        }
    }
}
