//! A connection wrapper between an accepted client connection and the HTTP
//! server that repairs a malformed HTTP/2 `:authority`.
//!
//! etcdctl 3.4's grpc-go puts its dial target into `:authority` as it is:
//! `http://127.0.0.1:2379` when it dials endpoints one by one (`endpoint
//! status|health`, also with `--cluster`), a socket path for `unix://`
//! endpoints. grpc-go's server (etcd) ignores it; h2 refuses the request
//! (`malformed authority`, RST_STREAM with PROTOCOL_ERROR).
//!
//! Anything that does not open with the HTTP/2 preface (HTTP/1.1, the JSON
//! gateway, curl) passes through untouched. On an HTTP/2 connection the
//! wrapper reads the client's frames up to its first header block: a valid
//! or absent `:authority` makes it forward everything from then on as it
//! is, so well-behaved clients pay for parsing one header block. A malformed
//! one makes it rewrite every header block of the connection: decoded with
//! an HPACK decoder that follows the client's dynamic table, `:authority`
//! replaced by its `host:port` (or `localhost`), and re-encoded with static
//! name references and literals that are never indexed, so the server's
//! decoder keeps an empty dynamic table and never sees a table size update
//! (both valid). Other frames, and everything the server sends, pass as
//! they are. Only the first block decides: grpc-go sends one authority per
//! connection.
//!
//! The HPACK decoder is loona-hpack's (h2 keeps its own private); its
//! Huffman decoding is slow, which only rewritten connections pay for. The
//! encoder is the few lines below: loona-hpack's indexes new names.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::Decoder;
use loona_hpack::decoder::DecoderError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::limits;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD_BYTES: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// SETTINGS_MAX_FRAME_SIZE's default, which our server keeps.
const FRAME_PAYLOAD_MAX: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE's default, which our server keeps: the most
/// a client's HPACK encoder may use.
const HEADER_TABLE_BYTES: usize = 4096;
/// Bytes read from the connection at a time while the wrapper still looks.
const READ_CHUNK_BYTES: usize = 8 * 1024;
/// HPACK's static table (RFC 7541 Appendix A), names only: index i+1.
const STATIC_NAMES: [&[u8]; 61] = [
    b":authority",
    b":method",
    b":method",
    b":path",
    b":path",
    b":scheme",
    b":scheme",
    b":status",
    b":status",
    b":status",
    b":status",
    b":status",
    b":status",
    b":status",
    b"accept-charset",
    b"accept-encoding",
    b"accept-language",
    b"accept-ranges",
    b"accept",
    b"access-control-allow-origin",
    b"age",
    b"allow",
    b"authorization",
    b"cache-control",
    b"content-disposition",
    b"content-encoding",
    b"content-language",
    b"content-length",
    b"content-location",
    b"content-range",
    b"content-type",
    b"cookie",
    b"date",
    b"etag",
    b"expect",
    b"expires",
    b"from",
    b"host",
    b"if-match",
    b"if-modified-since",
    b"if-none-match",
    b"if-range",
    b"if-unmodified-since",
    b"last-modified",
    b"link",
    b"location",
    b"max-forwards",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"range",
    b"referer",
    b"refresh",
    b"retry-after",
    b"server",
    b"set-cookie",
    b"strict-transport-security",
    b"transfer-encoding",
    b"user-agent",
    b"vary",
    b"via",
    b"www-authenticate",
];

/// An accepted client connection, read through the `:authority` repair.
/// Writes go straight to the inner stream.
pub struct AuthorityRewriter<S> {
    inner: S,
    /// `None` once the connection is known to need nothing: reads then go
    /// straight to `inner`.
    engine: Option<Box<Engine>>,
    /// Bytes for the server not yet handed to it.
    out: Vec<u8>,
    out_at: usize,
    eof: bool,
}

/// Why a connection is closed.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(
        "an HTTP/2 header block of at least {bytes} bytes exceeds the limit of {} bytes",
        limits::CLIENT_HEADER_BLOCK_BYTES_MAX
    )]
    BlockTooLarge { bytes: usize },
    #[error(
        "an HTTP/2 header list decodes to more than {} bytes",
        limits::CLIENT_HEADER_LIST_BYTES_MAX
    )]
    ListTooLarge,
    #[error("malformed HTTP/2 header frames: {0}")]
    Malformed(&'static str),
    #[error("undecodable HPACK header block: {0}")]
    Hpack(DecoderError),
}

/// The transformation itself, without I/O: the client's bytes go in through
/// [`Engine::feed`], the bytes for the server come out.
struct Engine {
    state: State,
    /// Received bytes not yet forwarded: part of the preface, of a frame
    /// header or of a header block.
    held: Vec<u8>,
    /// Payload bytes of the current frame (not a header block) still to be
    /// forwarded as they arrive.
    passing: usize,
}

enum State {
    Preface,
    /// HTTP/2, up to the client's first header block.
    FirstBlock,
    /// Every header block is rewritten; the decoder follows the client's
    /// dynamic table.
    Rewrite(Box<Decoder<'static>>),
    /// Everything is forwarded as it is.
    Through,
}

#[derive(Clone, Copy)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

/// One complete header block: a HEADERS frame and its CONTINUATION frames.
struct HeaderBlock {
    /// Bytes of all its frames, frame headers included.
    raw_len: usize,
    stream_id: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

// === impl AuthorityRewriter ===

impl<S> AuthorityRewriter<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            engine: Some(Box::new(Engine::new())),
            out: Vec::new(),
            out_at: 0,
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewriter<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out = Vec::new();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let Some(engine) = this.engine.as_mut() else {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            };
            if engine.is_through() {
                // Whatever it held went to `out` when it decided.
                this.engine = None;
                continue;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let mut chunk = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                this.eof = true;
                engine.finish(&mut this.out);
                continue;
            }
            if let Err(e) = engine.feed(chunk.filled(), &mut this.out) {
                tracing::warn!(error = %e, "closing a client connection");
                this.engine = None;
                this.out = Vec::new();
                this.out_at = 0;
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewriter<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityRewriter<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

// === impl Engine ===

impl Engine {
    fn new() -> Self {
        Self {
            state: State::Preface,
            held: Vec::new(),
            passing: 0,
        }
    }

    fn is_through(&self) -> bool {
        matches!(self.state, State::Through)
    }

    /// Takes the client's next bytes; appends what the server is to see.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Refusal> {
        self.held.extend_from_slice(input);
        let mut at = 0;
        let result = self.advance(&mut at, out);
        self.held.drain(..at);
        result
    }

    /// The client is gone: a truncated frame goes to the server as it came.
    fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
    }

    fn advance(&mut self, at: &mut usize, out: &mut Vec<u8>) -> Result<(), Refusal> {
        loop {
            let rest = &self.held[*at..];
            match &mut self.state {
                State::Through => {
                    out.extend_from_slice(rest);
                    *at = self.held.len();
                    return Ok(());
                }
                State::Preface => {
                    let n = rest.len().min(PREFACE.len());
                    if rest[..n] != PREFACE[..n] {
                        self.state = State::Through;
                    } else if n < PREFACE.len() {
                        return Ok(());
                    } else {
                        out.extend_from_slice(PREFACE);
                        *at += n;
                        self.state = State::FirstBlock;
                    }
                }
                State::FirstBlock | State::Rewrite(_) if self.passing > 0 => {
                    let n = self.passing.min(rest.len());
                    if n == 0 {
                        return Ok(());
                    }
                    out.extend_from_slice(&rest[..n]);
                    *at += n;
                    self.passing -= n;
                }
                State::FirstBlock | State::Rewrite(_) => {
                    let Some(head) = FrameHead::parse(rest) else {
                        return Ok(());
                    };
                    if head.kind != HEADERS {
                        out.extend_from_slice(&rest[..FRAME_HEAD_BYTES]);
                        *at += FRAME_HEAD_BYTES;
                        self.passing = head.len;
                        continue;
                    }
                    if let State::Rewrite(decoder) = &mut self.state {
                        let Some(block) = HeaderBlock::parse(rest)? else {
                            return Ok(());
                        };
                        let mut fields = decode(decoder, &block.fragment)?;
                        block.write_rewritten(&mut fields, out);
                        *at += block.raw_len;
                        continue;
                    }
                    let block = match HeaderBlock::parse(rest) {
                        Ok(Some(block)) => block,
                        Ok(None) => return Ok(()),
                        Err(e @ Refusal::BlockTooLarge { .. }) => return Err(e),
                        // Not ours to judge: the server answers it.
                        Err(_) => {
                            self.state = State::Through;
                            continue;
                        }
                    };
                    let mut decoder = new_decoder();
                    match decode(&mut decoder, &block.fragment) {
                        Ok(mut fields) if needs_rewrite(&fields) => {
                            tracing::debug!(
                                authority = %String::from_utf8_lossy(authority(&fields).unwrap_or_default()),
                                "client sent a malformed :authority; rewriting its header blocks"
                            );
                            block.write_rewritten(&mut fields, out);
                            self.state = State::Rewrite(decoder);
                        }
                        // A valid or absent :authority, or a block the
                        // server will refuse anyway.
                        _ => {
                            out.extend_from_slice(&rest[..block.raw_len]);
                            self.state = State::Through;
                        }
                    }
                    *at += block.raw_len;
                }
            }
        }
    }
}

fn new_decoder() -> Box<Decoder<'static>> {
    let mut decoder = Box::new(Decoder::new());
    decoder.set_max_allowed_table_size(HEADER_TABLE_BYTES);
    decoder
}

/// Decodes one block, bounding the decoded size (HPACK's accounting: name,
/// value and 32 bytes per field).
fn decode(decoder: &mut Decoder<'static>, fragment: &[u8]) -> Result<Fields, Refusal> {
    let mut fields = Vec::new();
    let mut bytes = 0usize;
    decoder
        .decode_with_cb(fragment, |name, value| {
            bytes = bytes.saturating_add(name.len() + value.len() + 32);
            if bytes <= limits::CLIENT_HEADER_LIST_BYTES_MAX {
                fields.push((name.into_owned(), value.into_owned()));
            }
        })
        .map_err(Refusal::Hpack)?;
    if bytes > limits::CLIENT_HEADER_LIST_BYTES_MAX {
        return Err(Refusal::ListTooLarge);
    }
    Ok(fields)
}

fn authority(fields: &Fields) -> Option<&[u8]> {
    fields
        .iter()
        .find(|(name, _)| name == b":authority")
        .map(|(_, value)| &value[..])
}

fn needs_rewrite(fields: &Fields) -> bool {
    fields
        .iter()
        .any(|(name, value)| name == b":authority" && !valid_authority(value))
}

/// The test h2 applies to `:authority`.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// `http://host:port/anything` → `host:port`; a socket path, or anything
/// else without a usable `host[:port]`, → `localhost`.
fn mend_authority(value: &[u8]) -> Vec<u8> {
    let rest = value
        .windows(3)
        .position(|w| w == b"://")
        .map_or(value, |i| &value[i + 3..]);
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let host = &rest[..end];
    if host_and_port(host) {
        host.to_vec()
    } else {
        b"localhost".to_vec()
    }
}

/// A valid authority whose port, if it has one, is a number (h2 alone
/// would take `unix:relative`).
fn host_and_port(value: &[u8]) -> bool {
    let Ok(authority) = http::uri::Authority::try_from(value) else {
        return false;
    };
    let after_ipv6 = value
        .iter()
        .rposition(|&b| b == b']')
        .map_or(value, |i| &value[i + 1..]);
    !after_ipv6.contains(&b':') || authority.port_u16().is_some()
}

/// HPACK without the dynamic table: every field a literal "without
/// indexing", its name a static-table reference where there is one.
fn encode(fields: &Fields) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        match STATIC_NAMES.iter().position(|n| *n == &name[..]) {
            Some(i) => put_int(&mut block, 0x00, 4, i + 1),
            None => {
                block.push(0x00);
                put_str(&mut block, name);
            }
        }
        put_str(&mut block, value);
    }
    block
}

/// RFC 7541 section 5.1.
fn put_int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// RFC 7541 section 5.2, without Huffman coding.
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

fn put_frame_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream_id: u32) {
    let len = u32::try_from(len).expect("frame length fits 24 bits");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

// === impl FrameHead ===

impl FrameHead {
    fn parse(buf: &[u8]) -> Option<Self> {
        let h = buf.get(..FRAME_HEAD_BYTES)?;
        Some(Self {
            len: usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]),
            kind: h[3],
            flags: h[4],
            stream_id: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        })
    }
}

// === impl HeaderBlock ===

impl HeaderBlock {
    /// `buf` starts with a HEADERS frame. `None` until the whole block is
    /// there.
    fn parse(buf: &[u8]) -> Result<Option<Self>, Refusal> {
        // Each frame's head and where its payload starts.
        let mut frames: Vec<(FrameHead, usize)> = Vec::new();
        let mut end = 0;
        loop {
            let Some(head) = FrameHead::parse(&buf[end..]) else {
                return Ok(None);
            };
            let frame_end = end + FRAME_HEAD_BYTES + head.len;
            if frame_end > limits::CLIENT_HEADER_BLOCK_BYTES_MAX {
                return Err(Refusal::BlockTooLarge { bytes: frame_end });
            }
            if let Some(&(first, _)) = frames.first()
                && (head.kind != CONTINUATION || head.stream_id != first.stream_id)
            {
                return Err(Refusal::Malformed(
                    "header block interrupted by another frame",
                ));
            }
            if frame_end > buf.len() {
                return Ok(None);
            }
            frames.push((head, end + FRAME_HEAD_BYTES));
            end = frame_end;
            if head.flags & END_HEADERS != 0 {
                break;
            }
        }
        let (first, _) = frames[0];
        let mut block = Self {
            raw_len: end,
            stream_id: first.stream_id,
            flags: first.flags,
            priority: None,
            fragment: Vec::new(),
        };
        for (i, &(head, at)) in frames.iter().enumerate() {
            let mut payload = &buf[at..at + head.len];
            if i == 0 {
                if head.flags & PADDED != 0 {
                    let (&pad, rest) = payload.split_first().ok_or(Refusal::Malformed(
                        "PADDED HEADERS frame without a pad length",
                    ))?;
                    let keep = rest
                        .len()
                        .checked_sub(usize::from(pad))
                        .ok_or(Refusal::Malformed("HEADERS padding longer than the frame"))?;
                    payload = &rest[..keep];
                }
                if head.flags & PRIORITY != 0 {
                    let (priority, rest) = payload.split_first_chunk::<5>().ok_or(
                        Refusal::Malformed("HEADERS frame too short for its priority"),
                    )?;
                    block.priority = Some(*priority);
                    payload = rest;
                }
            }
            block.fragment.extend_from_slice(payload);
        }
        Ok(Some(block))
    }

    /// Writes the block again with every malformed `:authority` mended, as
    /// one HEADERS frame (and CONTINUATION frames past the frame size).
    fn write_rewritten(&self, fields: &mut Fields, out: &mut Vec<u8>) {
        for (name, value) in fields.iter_mut() {
            if name == b":authority" && !valid_authority(value) {
                *value = mend_authority(value);
            }
        }
        let mut payload = Vec::new();
        if let Some(priority) = self.priority {
            payload.extend_from_slice(&priority);
        }
        payload.extend_from_slice(&encode(fields));
        let mut rest = &payload[..];
        let mut kind = HEADERS;
        let mut flags = self.flags & (END_STREAM | PRIORITY);
        loop {
            let (chunk, tail) = rest.split_at(rest.len().min(FRAME_PAYLOAD_MAX));
            let last = if tail.is_empty() { END_HEADERS } else { 0 };
            put_frame_head(out, chunk.len(), kind, flags | last, self.stream_id);
            out.extend_from_slice(chunk);
            if tail.is_empty() {
                return;
            }
            rest = tail;
            kind = CONTINUATION;
            flags = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// What etcdctl 3.4 (grpc-go) sent for `--endpoints=http://127.0.0.1:23791
    /// endpoint status`: preface, SETTINGS, WINDOW_UPDATE, HEADERS, DATA.
    const ETCDCTL_ENDPOINT_STATUS: &str = "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a0000000400000000000000000401000000000000770104000000018386459760a924882d9dcb6571afa066a925a87510ac6e48d36a3f41909d29aee30c044eae05c0b86e09975f0f5f8b1d75d0620d263d4c4d65647a8b9acac8b4c7602bb2caecff40027465864d833505b11f40899acac8b24d494f6a7f8669f7c0e3ad5b408d25062d495875996ee5b1063d5f03332e340000050001000000010000000000";
    /// And for `--endpoints=unix:///tmp/cap/p.sock get foo`.
    const ETCDCTL_UNIX_GET: &str = "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a00000004000000000000006b0104000000018386459060a924882d9dcb6571af9b8b1b4754c5418b6134d6c1075b15ae8393af5f8b1d75d0620d263d4c4d65647a8b9acac8b4c7602bb2caecff40027465864d833505b11f40899acac8b24d494f6a7f8669f7de03e0b7408d25062d495875996ee5b1063d5f03332e3400000a00010000000100000000050a03666f6f000000040100000000";

    #[derive(Debug, PartialEq)]
    struct Frame {
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: Vec<u8>,
    }

    /// Splits what the server would read into the preface and frames.
    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut rest = bytes.strip_prefix(PREFACE).expect("preface");
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let h = FrameHead::parse(rest).expect("frame head");
            assert!(h.len <= FRAME_PAYLOAD_MAX, "frame of {} bytes", h.len);
            frames.push(Frame {
                kind: h.kind,
                flags: h.flags,
                stream_id: h.stream_id,
                payload: rest[FRAME_HEAD_BYTES..FRAME_HEAD_BYTES + h.len].to_vec(),
            });
            rest = &rest[FRAME_HEAD_BYTES + h.len..];
        }
        frames
    }

    /// Decodes every header block the server would see, with one decoder
    /// (as the server does), and checks each field is a literal that is
    /// never indexed, so the server's dynamic table stays empty.
    fn server_view(frames: &[Frame]) -> Vec<Fields> {
        let mut decoder = Decoder::new();
        let mut blocks = Vec::new();
        let mut fragment = Vec::new();
        for f in frames {
            match f.kind {
                HEADERS => {
                    assert!(fragment.is_empty());
                    assert_eq!(f.flags & PADDED, 0);
                    let skip = if f.flags & PRIORITY != 0 { 5 } else { 0 };
                    fragment.extend_from_slice(&f.payload[skip..]);
                }
                CONTINUATION => fragment.extend_from_slice(&f.payload),
                _ => continue,
            }
            if f.flags & END_HEADERS != 0 {
                blocks.push(decoder.decode(&fragment).expect("decodable"));
                fragment.clear();
            }
        }
        assert!(fragment.is_empty(), "an unfinished header block");
        // Index 62 is the first dynamic entry: there is none.
        assert!(decoder.decode(&[0x80 | 62]).is_err(), "dynamic table used");
        blocks
    }

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_frame_head(&mut out, payload.len(), kind, flags, stream_id);
        out.extend_from_slice(payload);
        out
    }

    const SETTINGS: u8 = 0x4;
    const DATA: u8 = 0x0;

    fn request(authority: &str) -> Fields {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.Maintenance/Status"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-go/1.26.0"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    /// An HPACK encoder that indexes like grpc-go: `:method: POST` and
    /// `:scheme: http` from the static table, every other field a literal
    /// with incremental indexing the first time and a dynamic-table
    /// reference after. Its fields stay small enough never to be evicted.
    #[derive(Default)]
    struct GrpcGoEncoder {
        /// The dynamic table, newest first.
        table: Vec<(Vec<u8>, Vec<u8>)>,
    }

    impl GrpcGoEncoder {
        fn encode(&mut self, fields: &Fields) -> Vec<u8> {
            let mut block = Vec::new();
            for field in fields {
                let (name, value) = (&field.0[..], &field.1[..]);
                if (name, value) == (b":method", b"POST") {
                    block.push(0x80 | 3);
                } else if (name, value) == (b":scheme", b"http") {
                    block.push(0x80 | 6);
                } else if let Some(i) = self.table.iter().position(|f| f == field) {
                    put_int(&mut block, 0x80, 7, 62 + i);
                } else {
                    match STATIC_NAMES.iter().position(|n| *n == name) {
                        Some(i) => put_int(&mut block, 0x40, 6, i + 1),
                        None => {
                            block.push(0x40);
                            put_str(&mut block, name);
                        }
                    }
                    put_str(&mut block, value);
                    self.table.insert(0, field.clone());
                }
            }
            block
        }
    }

    fn connection(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend_from_slice(&frame(SETTINGS, 0, 0, &[]));
        for p in parts {
            out.extend_from_slice(p);
        }
        out
    }

    /// Feeds the bytes at once and again one by one; both must agree.
    fn run(input: &[u8]) -> Result<Vec<u8>, Refusal> {
        let mut whole = Vec::new();
        let mut engine = Engine::new();
        let first = engine.feed(input, &mut whole);
        engine.finish(&mut whole);
        let mut bytewise = Vec::new();
        let mut engine = Engine::new();
        let mut second = Ok(());
        for b in input {
            second = engine.feed(std::slice::from_ref(b), &mut bytewise);
            if second.is_err() {
                break;
            }
        }
        assert_eq!(first.is_ok(), second.is_ok());
        first?;
        engine.finish(&mut bytewise);
        assert_eq!(
            whole, bytewise,
            "the result depends on how the bytes arrive"
        );
        Ok(whole)
    }

    #[test]
    fn a_url_authority_becomes_host_and_port() {
        let mut enc = GrpcGoEncoder::default();
        let block = enc.encode(&request("http://127.0.0.1:2379"));
        let body = [0, 0, 0, 0, 0];
        let input = connection(&[
            frame(HEADERS, END_HEADERS, 1, &block),
            frame(DATA, END_STREAM, 1, &body),
        ]);
        let out = frames(&run(&input).unwrap());
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0],
            Frame {
                kind: SETTINGS,
                flags: 0,
                stream_id: 0,
                payload: vec![]
            }
        );
        assert_eq!(
            (out[1].kind, out[1].flags, out[1].stream_id),
            (HEADERS, END_HEADERS, 1)
        );
        assert_eq!(
            out[2],
            Frame {
                kind: DATA,
                flags: END_STREAM,
                stream_id: 1,
                payload: body.to_vec()
            }
        );
        assert_eq!(server_view(&out), vec![request("127.0.0.1:2379")]);
    }

    #[test]
    fn the_second_request_refers_to_the_clients_dynamic_table() {
        let mut enc = GrpcGoEncoder::default();
        let first = enc.encode(&request("http://127.0.0.1:2379"));
        let second = enc.encode(&request("http://127.0.0.1:2379"));
        // Fully indexed this time: the rewrite must follow the client's table.
        assert!(second.iter().all(|b| b & 0x80 != 0), "{second:02x?}");
        let mut third_fields = request("http://127.0.0.1:2379");
        third_fields[2].1 = b"/etcdserverpb.KV/Range".to_vec();
        let third = enc.encode(&third_fields);
        let input = connection(&[
            frame(HEADERS, END_HEADERS, 1, &first),
            frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]),
            frame(HEADERS, END_HEADERS, 3, &second),
            frame(HEADERS, END_HEADERS | END_STREAM, 5, &third),
        ]);
        let out = frames(&run(&input).unwrap());
        let mut want_third = request("127.0.0.1:2379");
        want_third[2].1 = b"/etcdserverpb.KV/Range".to_vec();
        assert_eq!(
            server_view(&out),
            vec![
                request("127.0.0.1:2379"),
                request("127.0.0.1:2379"),
                want_third
            ]
        );
        assert_eq!(out[4].flags, END_HEADERS | END_STREAM);
        assert_eq!(out[4].stream_id, 5);
    }

    #[test]
    fn captured_etcdctl_requests_are_repaired() {
        for (hex, want) in [
            (ETCDCTL_ENDPOINT_STATUS, "127.0.0.1:23791"),
            (ETCDCTL_UNIX_GET, "localhost"),
        ] {
            let input = unhex(hex);
            let mut decoder = Decoder::new();
            let before: Vec<Fields> = frames(&input)
                .iter()
                .filter(|f| f.kind == HEADERS)
                .map(|f| decoder.decode(&f.payload).unwrap())
                .collect();
            assert!(needs_rewrite(&before[0]), "{:?}", authority(&before[0]));
            let out = frames(&run(&input).unwrap());
            let after = server_view(&out);
            assert_eq!(after.len(), 1);
            let mut want_fields = before[0].clone();
            for (n, v) in &mut want_fields {
                if n == b":authority" {
                    *v = want.as_bytes().to_vec();
                }
            }
            assert_eq!(after[0], want_fields);
            // Everything but the header block is unchanged.
            let others = |fs: &[Frame]| -> Vec<(u8, u8, u32, Vec<u8>)> {
                fs.iter()
                    .filter(|f| f.kind != HEADERS)
                    .map(|f| (f.kind, f.flags, f.stream_id, f.payload.clone()))
                    .collect()
            };
            assert_eq!(others(&out), others(&frames(&input)));
        }
    }

    #[test]
    fn http1_and_good_http2_pass_unchanged() {
        let http1 = b"POST /v3/kv/range HTTP/1.1\r\nHost: localhost\r\n\r\n{}".to_vec();
        assert_eq!(run(&http1).unwrap(), http1);
        // A short HTTP/1.1 request that ends on a prefix of the preface.
        assert_eq!(run(b"PRI").unwrap(), b"PRI");

        let mut enc = GrpcGoEncoder::default();
        let first = enc.encode(&request("127.0.0.1:2379"));
        let good = connection(&[
            frame(HEADERS, END_HEADERS, 1, &first),
            frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]),
            // Not looked at any more: even a malformed later request passes.
            frame(HEADERS, END_HEADERS, 3, &enc.encode(&request("http://x:1"))),
            frame(HEADERS, END_HEADERS, 5, &[0xff, 0xff, 0xff]),
        ]);
        assert_eq!(run(&good).unwrap(), good);
        let mut engine = Engine::new();
        engine.feed(&good, &mut Vec::new()).unwrap();
        assert!(engine.is_through());

        // No :authority at all, and an undecodable first block: the server
        // answers those.
        let mut no_authority = request("x");
        no_authority.retain(|(n, _)| n != b":authority");
        let absent = connection(&[frame(HEADERS, END_HEADERS, 1, &encode(&no_authority))]);
        assert_eq!(run(&absent).unwrap(), absent);
        let garbage = connection(&[frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff])]);
        assert_eq!(run(&garbage).unwrap(), garbage);
    }

    #[test]
    fn continuation_padding_and_priority() {
        let mut enc = GrpcGoEncoder::default();
        let block = enc.encode(&request("unix:///var/run/cairn.sock"));
        let (a, b) = block.split_at(10);
        let (b, c) = b.split_at(7);
        let priority = [0x80, 0, 0, 0, 0x0f];
        let pad = [0u8; 6];
        let mut payload = vec![pad.len() as u8];
        payload.extend_from_slice(&priority);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&pad);
        let input = connection(&[
            frame(HEADERS, PADDED | PRIORITY | END_STREAM, 7, &payload),
            frame(CONTINUATION, 0, 7, b),
            frame(CONTINUATION, END_HEADERS, 7, c),
        ]);
        let out = frames(&run(&input).unwrap());
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].kind, HEADERS);
        assert_eq!(out[1].flags, PRIORITY | END_STREAM | END_HEADERS);
        assert_eq!(out[1].stream_id, 7);
        assert_eq!(out[1].payload[..5], priority);
        assert_eq!(server_view(&out), vec![request("localhost")]);
    }

    #[test]
    fn a_long_block_is_split_into_continuation_frames() {
        let mut fields = request("http://127.0.0.1:2379/");
        fields.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        let mut enc = GrpcGoEncoder::default();
        let block = enc.encode(&fields);
        let input = connection(&block_frames(&block, 1, END_STREAM));
        let out = frames(&run(&input).unwrap());
        let kinds: Vec<(u8, u8)> = out[1..].iter().map(|f| (f.kind, f.flags)).collect();
        assert_eq!(
            kinds,
            [
                (HEADERS, END_STREAM),
                (CONTINUATION, 0),
                (CONTINUATION, END_HEADERS)
            ]
        );
        fields[3].1 = b"127.0.0.1:2379".to_vec();
        assert_eq!(server_view(&out), vec![fields]);
    }

    /// A block as HEADERS plus CONTINUATION frames of at most the default size.
    fn block_frames(block: &[u8], stream_id: u32, flags: u8) -> Vec<Vec<u8>> {
        let chunks: Vec<&[u8]> = block.chunks(FRAME_PAYLOAD_MAX).collect();
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let last = if i + 1 == chunks.len() {
                    END_HEADERS
                } else {
                    0
                };
                if i == 0 {
                    frame(HEADERS, flags | last, stream_id, c)
                } else {
                    frame(CONTINUATION, last, stream_id, c)
                }
            })
            .collect()
    }

    #[test]
    fn oversized_blocks_and_header_lists_are_refused() {
        // Refused from the frame header alone, before the payload arrives.
        let mut input = connection(&[]);
        put_frame_head(
            &mut input,
            limits::CLIENT_HEADER_BLOCK_BYTES_MAX,
            HEADERS,
            0,
            1,
        );
        assert!(matches!(run(&input), Err(Refusal::BlockTooLarge { .. })));

        // A small block whose dynamic-table references decode to too much.
        let mut enc = GrpcGoEncoder::default();
        let mut fields = request("http://127.0.0.1:2379");
        fields.push((b"x-big".to_vec(), vec![b'v'; 4000]));
        let first = enc.encode(&fields);
        let n = limits::CLIENT_HEADER_LIST_BYTES_MAX / 4000 + 1;
        let second = vec![0x80 | 62; n];
        let input = connection(&[
            frame(HEADERS, END_HEADERS, 1, &first),
            frame(HEADERS, END_HEADERS, 3, &second),
        ]);
        assert!(matches!(run(&input), Err(Refusal::ListTooLarge)));
    }

    #[test]
    fn garbage_never_panics() {
        let mut enc = GrpcGoEncoder::default();
        let good = connection(&[frame(
            HEADERS,
            END_HEADERS,
            1,
            &enc.encode(&request("http://h:1")),
        )]);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut input = good.clone();
            for _ in 0..(next() % 8 + 1) {
                let i = PREFACE.len() + (next() as usize) % (input.len() - PREFACE.len());
                input[i] = next() as u8;
            }
            let tail = (next() % 64) as usize;
            input.extend((0..tail).map(|_| next() as u8));
            let _ = run(&input);
        }
    }

    #[test]
    fn mending() {
        for (from, to) in [
            ("http://127.0.0.1:2379", "127.0.0.1:2379"),
            ("https://[::1]:2379/x?y", "[::1]:2379"),
            ("/run/cairn/cairn.sock", "localhost"),
            ("unix:///run/cairn.sock", "localhost"),
            ("unix:relative/cairn.sock", "localhost"),
            ("http://[::1]/", "[::1]"),
            ("http://cairn-1.example:2379", "cairn-1.example:2379"),
            ("", "localhost"),
        ] {
            assert_eq!(mend_authority(from.as_bytes()), to.as_bytes(), "{from}");
        }
        assert!(valid_authority(b"p.sock"));
        assert!(!valid_authority(b"http://127.0.0.1:2379"));
    }

    #[tokio::test]
    async fn the_stream_reads_through_the_engine_and_writes_straight() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = AuthorityRewriter::new(server);
        let mut enc = GrpcGoEncoder::default();
        let input = connection(&[frame(
            HEADERS,
            END_HEADERS,
            1,
            &enc.encode(&request("http://127.0.0.1:2379")),
        )]);
        let writer = tokio::spawn(async move {
            // Byte by byte at first, so the stream waits for more.
            for b in &input[..30] {
                client.write_all(std::slice::from_ref(b)).await.unwrap();
            }
            client.write_all(&input[30..]).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut seen = Vec::new();
        server.read_to_end(&mut seen).await.unwrap();
        assert_eq!(server_view(&frames(&seen)), vec![request("127.0.0.1:2379")]);
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        assert_eq!(writer.await.unwrap(), b"reply");
    }
}
