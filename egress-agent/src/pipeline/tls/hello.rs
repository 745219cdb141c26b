//! ClientHello parsing (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2) over a possibly
//! truncated capture: records are reassembled (a hello may span several),
//! every length is checked against BOTH its enclosing structure (else
//! `Malformed`) and the captured bytes (else `Incomplete`).
use std::borrow::Cow;

use super::{CONTENT_HANDSHAKE, ClientHello, MAX_PLAINTEXT, TlsParseError};

const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
/// version(2) random(32) session_id(1+0) cipher_suites(2+2) compression(1+1).
const MIN_BODY: usize = 41;

/// Why parsing stopped early.
enum Stop {
    /// The capture ends inside a structure whose declared length goes on.
    Incomplete,
    Malformed(&'static str),
}

impl From<Stop> for TlsParseError {
    fn from(s: Stop) -> Self {
        match s {
            Stop::Incomplete => TlsParseError::Incomplete { needed: None },
            Stop::Malformed(why) => TlsParseError::Malformed(why),
        }
    }
}

/// A cursor over `buf[pos..end]`, where `end` is the DECLARED end and may lie
/// beyond the captured `buf`.
struct Cur<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cur<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cur { buf, pos: 0, end: buf.len() }
    }

    fn done(&self) -> bool {
        self.pos >= self.end
    }

    /// Moves `n` bytes forward within the declared end; `what` names the field.
    fn skip(&mut self, n: usize, what: &'static str) -> Result<usize, Stop> {
        let new =
            self.pos.checked_add(n).filter(|&e| e <= self.end).ok_or(Stop::Malformed(what))?;
        Ok(std::mem::replace(&mut self.pos, new))
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Stop> {
        let start = self.skip(n, what)?;
        self.buf.get(start..self.pos).ok_or(Stop::Incomplete)
    }

    fn uint(&mut self, n: usize, what: &'static str) -> Result<usize, Stop> {
        Ok(self.take(n, what)?.iter().fold(0, |v, &b| (v << 8) | usize::from(b)))
    }

    /// A vector with an `n`-byte length prefix: its cursor, whose contents need
    /// not be captured yet; `self` moves past it.
    fn vec(&mut self, n: usize, what: &'static str) -> Result<Cur<'a>, Stop> {
        let len = self.uint(n, what)?;
        let start = self.skip(len, what)?;
        Ok(Cur { buf: self.buf, pos: start, end: self.pos })
    }

    /// All of a cursor's bytes, which must have been captured.
    fn all(&self) -> Result<&'a [u8], Stop> {
        self.buf.get(self.pos..self.end).ok_or(Stop::Incomplete)
    }
}

/// The handshake bytes the records carry, with what is known of their end.
struct Reassembled<'a> {
    bytes: Cow<'a, [u8]>,
    record_version: u16,
    /// Record headers read so far (for the `needed` estimate).
    records: usize,
}

/// Reads records from the start of `input` until the first handshake message
/// is whole or the input ends.
fn reassemble(input: &[u8]) -> Result<Reassembled<'_>, TlsParseError> {
    let mut out: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut at = 0;
    let mut records = 0;
    let mut record_version = 0;
    loop {
        if let Some(hs) = out.get(1..4) {
            let total = 4 + hs.iter().fold(0, |v, &b| (v << 8) | usize::from(b));
            if out.len() >= total {
                break;
            }
        }
        let header = &input[at.min(input.len())..];
        match header.first() {
            None => break,
            Some(&CONTENT_HANDSHAKE) => {}
            Some(_) if records == 0 => return Err(TlsParseError::NotTls),
            Some(_) => {
                return Err(TlsParseError::Malformed(
                    "ClientHello interrupted by a non-handshake record",
                ));
            }
        }
        match header.get(1..3) {
            Some([3, minor]) if *minor <= 4 => {}
            Some(_) if records == 0 => return Err(TlsParseError::NotTls),
            Some(_) => return Err(TlsParseError::Malformed("record version is not 3.x")),
            None if header.get(1).is_some_and(|&b| b != 3) && records == 0 => {
                return Err(TlsParseError::NotTls);
            }
            None => break,
        }
        let Some(len) = header.get(3..5).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            break;
        };
        if len == 0 {
            return Err(TlsParseError::Malformed("empty handshake record"));
        }
        if len > MAX_PLAINTEXT {
            return Err(TlsParseError::Malformed("record longer than 2^14 bytes"));
        }
        if records == 0 {
            record_version = u16::from_be_bytes([header[1], header[2]]);
        }
        records += 1;
        let fragment = &header[5..header.len().min(5 + len)];
        out = match out {
            Cow::Borrowed([]) => Cow::Borrowed(fragment),
            prev => {
                let mut v = prev.into_owned();
                v.extend_from_slice(fragment);
                Cow::Owned(v)
            }
        };
        at += 5 + len;
    }
    Ok(Reassembled { bytes: out, record_version, records })
}

pub(super) fn parse(input: &[u8]) -> Result<ClientHello, TlsParseError> {
    let r = reassemble(input)?;
    let hs = &r.bytes[..];
    let needed = |stop: Stop| -> TlsParseError {
        match stop {
            Stop::Incomplete => TlsParseError::Incomplete {
                // At least: every record header so far, plus the whole message.
                needed: hs.get(1..4).map(|l| {
                    5 * r.records.max(1) + 4 + l.iter().fold(0, |v, &b| (v << 8) | usize::from(b))
                }),
            },
            Stop::Malformed(why) => TlsParseError::Malformed(why),
        }
    };
    match hs.first() {
        None => return Err(TlsParseError::Incomplete { needed: None }),
        Some(&HANDSHAKE_CLIENT_HELLO) => {}
        Some(&other) => return Err(TlsParseError::NotClientHello { handshake_type: other }),
    }
    let Some(&[a, b, c]) = hs.get(1..4) else {
        return Err(TlsParseError::Incomplete { needed: None });
    };
    let body_len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    if body_len < MIN_BODY {
        return Err(TlsParseError::Malformed("ClientHello shorter than its fixed fields"));
    }
    let mut body = Cur { buf: &hs[..hs.len().min(4 + body_len)], pos: 4, end: 4 + body_len };
    let mut hello = ClientHello { record_version: r.record_version, ..ClientHello::default() };
    fixed_fields(&mut body, &mut hello).map_err(needed)?;
    if body.done() {
        // No extensions at all (SSL 3.0 / early TLS style): complete, no SNI.
        hello.truncated = body.buf.len() < body.end;
        return Ok(hello);
    }
    let mut exts = body.vec(2, "extensions run past the ClientHello").map_err(needed)?;
    if !body.done() {
        return Err(TlsParseError::Malformed("bytes after the extensions"));
    }
    let mut seen = Seen::default();
    while !exts.done() {
        match extension(&mut exts, &mut hello, &mut seen) {
            Ok(()) => {}
            // The server_name extension was read: what the caller wants is known.
            Err(Stop::Incomplete) if seen.server_name => {
                hello.truncated = true;
                return Ok(hello);
            }
            Err(stop) => return Err(needed(stop)),
        }
    }
    Ok(hello)
}

fn fixed_fields(body: &mut Cur<'_>, hello: &mut ClientHello) -> Result<(), Stop> {
    let version = body.take(2, "client_version runs past the ClientHello")?;
    hello.legacy_version = u16::from_be_bytes([version[0], version[1]]);
    if hello.legacy_version >> 8 != 3 {
        return Err(Stop::Malformed("client_version is not 3.x"));
    }
    body.skip(32, "random runs past the ClientHello")?;
    let session_id = body.vec(1, "session_id runs past the ClientHello")?;
    if session_id.end - session_id.pos > 32 {
        return Err(Stop::Malformed("session_id longer than 32 bytes"));
    }
    let suites = body.vec(2, "cipher_suites run past the ClientHello")?;
    let n = suites.end - suites.pos;
    if n < 2 || n % 2 != 0 {
        return Err(Stop::Malformed("cipher_suites empty or of odd length"));
    }
    let compression = body.vec(1, "compression_methods run past the ClientHello")?;
    if compression.done() {
        return Err(Stop::Malformed("no compression method"));
    }
    Ok(())
}

/// Which of the extensions read may not appear twice (RFC 8446 §4.2).
#[derive(Default)]
struct Seen {
    server_name: bool,
    alpn: bool,
    supported_versions: bool,
}

fn first_time(seen: &mut bool, what: &'static str) -> Result<(), Stop> {
    if std::mem::replace(seen, true) { Err(Stop::Malformed(what)) } else { Ok(()) }
}

/// One extension, which must be captured whole to be used.
fn extension(exts: &mut Cur<'_>, hello: &mut ClientHello, seen: &mut Seen) -> Result<(), Stop> {
    let kind = exts.take(2, "extension header runs past the extensions")?;
    let data = exts.vec(2, "extension runs past the extensions")?.all()?;
    match u16::from_be_bytes([kind[0], kind[1]]) {
        EXT_SERVER_NAME => {
            hello.sni = server_name(data)?;
            first_time(&mut seen.server_name, "server_name extension repeated")?;
        }
        EXT_ALPN => {
            hello.alpn = alpn(data)?;
            first_time(&mut seen.alpn, "ALPN extension repeated")?;
        }
        EXT_SUPPORTED_VERSIONS => {
            hello.supported_versions = supported_versions(data)?;
            first_time(&mut seen.supported_versions, "supported_versions extension repeated")?;
        }
        EXT_ENCRYPTED_CLIENT_HELLO => hello.ech = true,
        _ => {}
    }
    Ok(())
}

/// RFC 6066 §3: the host_name entry (at most one) of the server_name list.
fn server_name(data: &[u8]) -> Result<Option<String>, Stop> {
    let mut c = Cur::new(data);
    let mut list = c.vec(2, "server_name list runs past its extension")?;
    if !c.done() || list.done() {
        return Err(Stop::Malformed("server_name list empty or not filling its extension"));
    }
    let mut host = None;
    while !list.done() {
        let kind = list.uint(1, "server_name entry runs past its list")?;
        let name = list.vec(2, "server_name entry runs past its list")?.all()?;
        if kind != 0 {
            continue;
        }
        if host.is_some() {
            return Err(Stop::Malformed("two host_name entries in server_name"));
        }
        if name.is_empty() || name.len() > 255 || !name.iter().all(|b| b.is_ascii_graphic()) {
            return Err(Stop::Malformed("server_name host_name is not an ASCII host name"));
        }
        host = Some(String::from_utf8_lossy(name).into_owned());
    }
    Ok(host)
}

/// RFC 7301 §3.1: ProtocolNameList, each name 1-255 bytes.
fn alpn(data: &[u8]) -> Result<Vec<String>, Stop> {
    let mut c = Cur::new(data);
    let mut list = c.vec(2, "ALPN list runs past its extension")?;
    if !c.done() || list.done() {
        return Err(Stop::Malformed("ALPN list empty or not filling its extension"));
    }
    let mut out = Vec::new();
    while !list.done() {
        let name = list.vec(1, "ALPN protocol runs past its list")?.all()?;
        if name.is_empty() {
            return Err(Stop::Malformed("empty ALPN protocol name"));
        }
        out.push(String::from_utf8_lossy(name).into_owned());
    }
    Ok(out)
}

/// RFC 8446 §4.2.1: 1-byte length, 2..=254 bytes of versions; GREASE dropped.
fn supported_versions(data: &[u8]) -> Result<Vec<u16>, Stop> {
    let mut c = Cur::new(data);
    let list = c.vec(1, "supported_versions list runs past its extension")?.all()?;
    if !c.done() || list.len() < 2 || list.len() % 2 != 0 {
        return Err(Stop::Malformed(
            "supported_versions list empty, odd or not filling its extension",
        ));
    }
    Ok(list
        .chunks_exact(2)
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
        .filter(|&v| !super::is_grease(v))
        .collect())
}
