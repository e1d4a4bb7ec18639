//! The chunked transfer coding, read from a buffer: the own HTTP/1.1 client reads answers
//! with it, the own HTTP/1.1 server request bodies. As hyper reads it (hyper 1.x
//! `proto::h1::decode`): a size line of hex digits, extensions of at most 16 KiB in a whole
//! body, each chunk's data followed by a line end, and after the last chunk a trailer
//! section of at most 16 KiB and 100 fields.

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The longest line of a chunk's size, the most bytes of chunk extensions in a body, and
/// the largest trailer section (hyper's limits, 16 KiB each).
const MAX_CHUNK_LINE: usize = 16 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// The most fields of a trailer section (hyper's, as for a head).
const MAX_TRAILER_FIELDS: usize = 100;

/// Where a chunked body's reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// At a chunk's size line.
    Size,
    /// In a chunk's data, this many bytes from its end.
    Data(u64),
    /// At the line end after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers, if any, then an empty line.
    Trailers,
}

/// A chunked body's reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    at: Chunk,
    /// Bytes of chunk extensions read so far.
    extensions: usize,
    /// How much of the buffer was searched for the end of a size line or trailer section
    /// already: each byte is looked at about once, however the line comes in.
    searched: usize,
}

/// What a chunked body's reader found in its buffer.
pub enum Decoded {
    /// Data of the body.
    Data(Bytes),
    /// The body's trailers: its end.
    Trailers(HeaderMap),
    /// The body's end, without trailers.
    End,
    /// More must be read first.
    More,
}

impl Chunked {
    pub const fn new() -> Chunked {
        Chunked {
            at: Chunk::Size,
            extensions: 0,
            searched: 0,
        }
    }

    /// The bytes left of the chunk whose data is being read, if it is.
    pub fn data_left(&self) -> Option<u64> {
        match self.at {
            Chunk::Data(left) => Some(left),
            _ => None,
        }
    }

    /// Where `end` starts in `buf`, searching only what was not searched before (and the
    /// bytes an `end` cut short by the buffer's end may have begun with).
    fn find(&mut self, buf: &[u8], end: &[u8]) -> Option<usize> {
        let from = self.searched.saturating_sub(end.len() - 1).min(buf.len());
        match buf[from..].windows(end.len()).position(|w| w == end) {
            Some(at) => {
                self.searched = 0;
                Some(from + at)
            }
            None => {
                self.searched = buf.len();
                None
            }
        }
    }

    /// Reads the body from what `buf` holds, taking off what it reads; after `Trailers` or
    /// `End`, what is left in `buf` comes after the body.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        loop {
            match self.at {
                Chunk::Size => {
                    let Some(end) = self.find(buf, b"\r\n") else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err("chunk size line too long");
                        }
                        return Ok(Decoded::More);
                    };
                    let (size, extensions) = chunk_size(&buf[..end]).ok_or("invalid chunk size")?;
                    self.extensions += extensions;
                    if self.extensions > MAX_CHUNK_LINE {
                        return Err("chunk extensions too large");
                    }
                    buf.advance(end + 2);
                    self.at = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.at = if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by a line end");
                    }
                    buf.advance(2);
                    self.at = Chunk::Size;
                }
                Chunk::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        return Ok(Decoded::End);
                    }
                    let Some(end) = self.find(buf, b"\r\n\r\n") else {
                        if buf.len() > MAX_TRAILERS {
                            return Err("trailers too large");
                        }
                        return Ok(Decoded::More);
                    };
                    let section = buf.split_to(end + 4).freeze();
                    return Ok(Decoded::Trailers(parse_trailers(&section)?));
                }
            }
        }
    }
}

/// A chunk's size line, `1a;ext=x` (extensions ignored, spaces and tabs before them or
/// the line's end allowed, as hyper allows them; a CR or LF within it is not): the size,
/// and how many bytes its extensions take.
fn chunk_size(line: &[u8]) -> Option<(u64, usize)> {
    if line.iter().any(|&b| b == b'\r' || b == b'\n') {
        return None;
    }
    let end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let (hex, rest) = line.split_at(end);
    let rest = rest.trim_ascii_start();
    if hex.is_empty() || !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    let size = hex.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(d))
    })?;
    Some((size, rest.len()))
}

/// A trailer section (its fields, then an empty line).
fn parse_trailers(section: &Bytes) -> Result<HeaderMap, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut fields)
    else {
        return Err("trailers do not parse");
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| "invalid trailer name")?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| "invalid trailer value")?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a"), Some((26, 0)));
        assert_eq!(chunk_size(b"1A;name=value"), Some((26, 11)));
        assert_eq!(chunk_size(b"0 ;x"), Some((0, 2)));
        assert_eq!(chunk_size(b"ffffffffffffffff"), Some((u64::MAX, 0)));
        assert_eq!(chunk_size(b"00000000000000005"), Some((5, 0)));
        for bad in [
            &b""[..],
            b"x",
            b"-1",
            b"1 2",
            b"10000000000000000",
            b";x",
            b"5 \n;x",
            b"5;a\nb",
            b"5;a\rb",
        ] {
            assert_eq!(chunk_size(bad), None, "{bad:?}");
        }
    }

    /// A body's data, its trailers, and what came after it.
    type Read = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Everything a body holds, read from `raw` given `step` bytes at a time.
    fn read(raw: &[u8], step: usize) -> Result<Read, &'static str> {
        let mut chunked = Chunked::new();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match chunked.decode(&mut buf)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => {
                    return Ok((data, Some(t), [&buf[..], &raw[fed..]].concat()));
                }
                Decoded::End => return Ok((data, None, [&buf[..], &raw[fed..]].concat())),
                Decoded::More => {
                    if fed == raw.len() {
                        return Err("short");
                    }
                    let next = (fed + step).min(raw.len());
                    buf.extend_from_slice(&raw[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn bodies_read_whole_however_they_come() {
        let raw = b"5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, raw.len()] {
            let (data, trailers, after) = read(raw, step).unwrap();
            assert_eq!(data, b"hello world", "step {step}");
            assert_eq!(trailers.unwrap()["x-sum"], "1");
            assert_eq!(after, b"NEXT");
        }
        // Spaces after a size are allowed (and are not extensions), whatever their number
        // below the line's limit.
        let padded = [&b"5"[..], &[b' '; 2000][..], b"\r\nhello\r\n0\r\n\r\n"].concat();
        assert_eq!(read(&padded, 1).unwrap().0, b"hello");
        let (data, trailers, after) = read(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!(
            (&data[..], trailers, &after[..]),
            (&b"abc"[..], None, &b""[..])
        );
        assert_eq!(
            read(b"3\r\nabcd\r\n0\r\n\r\n", 1).err(),
            Some("chunk data not followed by a line end")
        );
        assert_eq!(read(b"g\r\n", 1).err(), Some("invalid chunk size"));
        let long = [&b"1;"[..], &[b'x'; MAX_CHUNK_LINE][..]].concat();
        assert_eq!(read(&long, 4096).err(), Some("chunk size line too long"));
        let many = [&b"1;"[..], &[b'x'; MAX_CHUNK_LINE / 2][..], b"\r\na\r\n"]
            .concat()
            .repeat(3);
        assert_eq!(read(&many, 4096).err(), Some("chunk extensions too large"));
    }
}
