//! What a connection knows of its peer, computed once per connection.

use std::net::SocketAddr;

use http::header::HeaderValue;

/// The client end of a connection.
pub struct Peer {
    pub addr: SocketAddr,
    /// The peer IP as a header value, for `X-Forwarded-For`.
    pub ip_header: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            ip_header: HeaderValue::from_str(&addr.ip().to_string())
                .expect("an IP address is a valid header value"),
        }
    }
}
