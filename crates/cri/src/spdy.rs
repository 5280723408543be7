//! SPDY/3.1 framing, as much of it as Kubernetes' streaming protocols use (client-go
//! speaks it through moby/spdystream for `kubectl port-forward`, and for exec and attach
//! when WebSocket is not available): control frames (SYN_STREAM, SYN_REPLY, RST_STREAM,
//! SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE) and data frames, with header blocks
//! compressed by zlib over SPDY/3's preset dictionary, one compression context per
//! direction of a connection.
//!
//! Knows nothing of Kubernetes: streams and their headers are the caller's.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

const VERSION: u16 = 3;

pub const FLAG_FIN: u8 = 0x01;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const REFUSED_STREAM: u32 = 3;
pub const CANCEL: u32 = 5;

/// The largest frame payload accepted (SPDY allows 16 MiB; nothing here needs more than
/// a data chunk).
const MAX_PAYLOAD: usize = 1 << 20;
/// The most decompressed header bytes one block may make.
const MAX_HEADERS: usize = 256 << 10;

/// Header names and values, in order.
pub type Headers = Vec<(String, String)>;

/// One frame, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings,
    Ping {
        id: u32,
    },
    GoAway {
        last: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
    /// A control frame of a type SPDY/3.1 does not define (ignored, as the spec asks).
    Unknown,
}

/// SPDY/3's zlib dictionary: length-prefixed header words, then a run of common text.
pub fn dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TEXT: &str = concat!(
            "100101201202205206300302303304305306307402405406407408409410411412413414415416",
            "417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
            "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
            "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
            "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
            "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
            "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=",
            "iso-8859-1,utf-,*,enq=0."
        );
        let mut out = Vec::with_capacity(1423);
        for word in WORDS {
            out.extend_from_slice(&(word.len() as u32).to_be_bytes());
            out.extend_from_slice(word.as_bytes());
        }
        out.extend_from_slice(TEXT.as_bytes());
        out
    })
}

fn invalid(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

/// Reads frames, decompressing header blocks with the connection's one context.
pub struct Reader<R> {
    io: R,
    inflate: Decompress,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R) -> Reader<R> {
        Reader { io, inflate: Decompress::new(true) }
    }

    /// The next frame; an error when the stream ends or breaks the protocol.
    pub async fn next(&mut self) -> std::io::Result<Frame> {
        let mut head = [0u8; 8];
        self.io.read_exact(&mut head).await?;
        let flags = head[4];
        let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if length > MAX_PAYLOAD {
            return Err(invalid(format!("a SPDY frame of {length} bytes")));
        }
        let mut payload = vec![0u8; length];
        self.io.read_exact(&mut payload).await?;
        if head[0] & 0x80 == 0 {
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Frame::Data { stream, flags, data: payload });
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(invalid(format!("SPDY version {version}; berth speaks 3.1")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let word = |at: usize| -> std::io::Result<u32> {
            payload
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| invalid("a SPDY control frame too short"))
        };
        Ok(match kind {
            SYN_STREAM => {
                let stream = word(0)? & 0x7fff_ffff;
                let block = payload.get(10..).ok_or_else(|| invalid("SYN_STREAM too short"))?;
                Frame::SynStream { stream, flags, headers: self.headers(block)? }
            }
            SYN_REPLY => {
                let stream = word(0)? & 0x7fff_ffff;
                Frame::SynReply { stream, flags, headers: self.headers(&payload[4..])? }
            }
            HEADERS => {
                let stream = word(0)? & 0x7fff_ffff;
                Frame::Headers { stream, headers: self.headers(&payload[4..])? }
            }
            RST_STREAM => Frame::RstStream { stream: word(0)? & 0x7fff_ffff, status: word(4)? },
            SETTINGS => Frame::Settings,
            PING => Frame::Ping { id: word(0)? },
            GOAWAY => Frame::GoAway { last: word(0)? & 0x7fff_ffff, status: word(4).unwrap_or(0) },
            WINDOW_UPDATE => Frame::WindowUpdate {
                stream: word(0)? & 0x7fff_ffff,
                delta: word(4)? & 0x7fff_ffff,
            },
            _ => Frame::Unknown,
        })
    }

    /// A compressed header block: the pairs it holds.
    fn headers(&mut self, block: &[u8]) -> std::io::Result<Headers> {
        let mut raw = Vec::with_capacity(block.len() * 4 + 64);
        let mut rest = block;
        loop {
            let (before, made) = (self.inflate.total_in(), raw.len());
            if raw.capacity() == raw.len() {
                raw.reserve(raw.len().max(256));
            }
            let result = self.inflate.decompress_vec(rest, &mut raw, FlushDecompress::Sync);
            let used = usize::try_from(self.inflate.total_in() - before).unwrap_or(rest.len());
            rest = &rest[used.min(rest.len())..];
            let stuck = used == 0 && raw.len() == made && !rest.is_empty();
            match result {
                Err(err) if err.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| invalid(format!("SPDY header dictionary: {e}")))?;
                }
                Err(err) => return Err(invalid(format!("a SPDY header block: {err}"))),
                Ok(Status::StreamEnd) => break,
                Ok(_) if rest.is_empty() && raw.len() < raw.capacity() => break,
                Ok(_) if stuck => return Err(invalid("a SPDY header block that does not inflate")),
                Ok(_) => {}
            }
            if raw.len() > MAX_HEADERS {
                return Err(invalid("a SPDY header block over 256 KiB"));
            }
        }
        decode_headers(&raw)
    }
}

/// The pairs of an uncompressed header block (names lowercase, as SPDY/3 requires).
fn decode_headers(raw: &[u8]) -> std::io::Result<Headers> {
    let mut at = 0usize;
    let mut word = || -> std::io::Result<usize> {
        let bytes = raw.get(at..at + 4).ok_or_else(|| invalid("a SPDY header block cut short"))?;
        at += 4;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
    };
    let count = word()?;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let text = |at: &mut usize| -> std::io::Result<String> {
            let bytes =
                raw.get(*at..*at + 4).ok_or_else(|| invalid("a SPDY header block cut short"))?;
            let length = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            *at += 4;
            let value = raw
                .get(*at..*at + length)
                .ok_or_else(|| invalid("a SPDY header block cut short"))?;
            *at += length;
            Ok(String::from_utf8_lossy(value).into_owned())
        };
        let name = text(&mut at)?;
        let value = text(&mut at)?;
        headers.push((name, value));
    }
    Ok(headers)
}

fn encode_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        for text in [name.to_ascii_lowercase().as_str(), *value] {
            raw.extend_from_slice(&(text.len() as u32).to_be_bytes());
            raw.extend_from_slice(text.as_bytes());
        }
    }
    raw
}

/// Writes frames, compressing header blocks with the connection's one context.
pub struct Writer {
    deflate: Compress,
}

impl Default for Writer {
    fn default() -> Writer {
        let mut deflate = Compress::new(Compression::default(), true);
        // A fresh context takes the dictionary: it cannot fail.
        let _ = deflate.set_dictionary(dictionary());
        Writer { deflate }
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + payload.len());
    frame.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(payload);
    frame
}

impl Writer {
    fn compress(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let raw = encode_headers(headers);
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut rest = &raw[..];
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            let status = self.deflate.compress_vec(rest, &mut out, FlushCompress::Sync);
            let used = usize::try_from(self.deflate.total_in() - before).unwrap_or(rest.len());
            rest = &rest[used.min(rest.len())..];
            // Done when all input is in and the flush left room to spare.
            if status.is_err() || (rest.is_empty() && out.len() < out.capacity()) {
                break;
            }
        }
        out
    }

    pub fn syn_stream(&mut self, stream: u32, flags: u8, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut payload = Vec::new();
        payload.extend_from_slice(&stream.to_be_bytes());
        payload.extend_from_slice(&0u32.to_be_bytes());
        payload.extend_from_slice(&[0, 0]);
        payload.extend(self.compress(headers));
        control(SYN_STREAM, flags, &payload)
    }

    pub fn syn_reply(&mut self, stream: u32, flags: u8, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut payload = stream.to_be_bytes().to_vec();
        payload.extend(self.compress(headers));
        control(SYN_REPLY, flags, &payload)
    }
}

pub fn rst_stream(stream: u32, status: u32) -> Vec<u8> {
    let mut payload = stream.to_be_bytes().to_vec();
    payload.extend_from_slice(&status.to_be_bytes());
    control(RST_STREAM, 0, &payload)
}

pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

pub fn goaway(last: u32) -> Vec<u8> {
    let mut payload = last.to_be_bytes().to_vec();
    payload.extend_from_slice(&0u32.to_be_bytes());
    control(GOAWAY, 0, &payload)
}

pub fn data(stream: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + data.len());
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(data);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy_3s() {
        let dictionary = dictionary();
        assert_eq!(dictionary.len(), 1423);
        let digest = ring::digest::digest(&ring::digest::SHA256, dictionary);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02");
    }

    #[tokio::test]
    async fn frames_round_trip_with_one_compression_context_per_direction() {
        let mut writer = Writer::default();
        let mut wire = Vec::new();
        wire.extend(writer.syn_stream(1, 0, &[("streamType", "error"), ("port", "80")]));
        wire.extend(writer.syn_stream(3, 0, &[("streamtype", "data"), ("port", "80")]));
        wire.extend(data(3, FLAG_FIN, b"hello"));
        wire.extend(ping(7));
        wire.extend(rst_stream(1, CANCEL));
        let mut reader = Reader::new(&wire[..]);
        assert_eq!(
            reader.next().await.unwrap(),
            Frame::SynStream {
                stream: 1,
                flags: 0,
                headers: vec![("streamtype".into(), "error".into()), ("port".into(), "80".into())]
            }
        );
        // The second block leans on the first's context (and the dictionary).
        let Frame::SynStream { stream: 3, headers, .. } = reader.next().await.unwrap() else {
            panic!("a second SYN_STREAM")
        };
        assert_eq!(headers[0], ("streamtype".into(), "data".into()));
        assert_eq!(
            reader.next().await.unwrap(),
            Frame::Data { stream: 3, flags: FLAG_FIN, data: b"hello".to_vec() }
        );
        assert_eq!(reader.next().await.unwrap(), Frame::Ping { id: 7 });
        assert_eq!(reader.next().await.unwrap(), Frame::RstStream { stream: 1, status: CANCEL });
        assert!(reader.next().await.is_err(), "the end of the stream");
    }
}
