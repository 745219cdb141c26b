//! DNS wire format, as far as a verdict needs it: the header (id, QR,
//! rcode, counts) and the first question (name, type). Bounded: at most the
//! captured bytes are read, names of at most 255 bytes, no compression
//! pointers in the question (a query never has them). Every failure is a
//! typed error with a bounded metric label.

/// Longest name on the wire (RFC 1035 §2.3.4).
const MAX_NAME: usize = 255;
const HEADER: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    /// QR bit: a response.
    pub response: bool,
    pub rcode: u8,
    /// Lower-case, without the trailing dot; `.` for the root.
    pub qname: String,
    pub qtype: u16,
    pub answers: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("shorter than a DNS header")]
    Short,
    #[error("TCP length prefix missing or not matching")]
    TcpLength,
    #[error("no question")]
    NoQuestion,
    #[error("question name cut by the capture or the packet")]
    Truncated,
    #[error("bad label (length, pointer or characters)")]
    BadLabel,
    #[error("name longer than 255 bytes")]
    NameTooLong,
}

impl WireError {
    /// Bounded label for `egress_dns_decode_errors_total{reason}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::TcpLength => "tcp_length",
            Self::NoQuestion => "no_question",
            Self::Truncated => "truncated",
            Self::BadLabel => "bad_label",
            Self::NameTooLong => "name_too_long",
        }
    }

    pub const ALL: [WireError; 6] = [
        Self::Short,
        Self::TcpLength,
        Self::NoQuestion,
        Self::Truncated,
        Self::BadLabel,
        Self::NameTooLong,
    ];
}

/// Parse a captured message. `tcp`: the message starts with its 2-byte
/// length (RFC 1035 §4.2.2); `wire_len` is what the packet carried.
pub fn parse(data: &[u8], tcp: bool, wire_len: usize) -> Result<Message, WireError> {
    let data = if tcp {
        let (l, rest) = data.split_first_chunk::<2>().ok_or(WireError::TcpLength)?;
        let declared = usize::from(u16::from_be_bytes(*l));
        // A continuation segment of a longer message does not start with a
        // plausible length: the declared length must cover what follows.
        if declared < HEADER || declared + 2 < wire_len {
            return Err(WireError::TcpLength);
        }
        rest
    } else {
        data
    };
    if data.len() < HEADER {
        return Err(WireError::Short);
    }
    let be = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]);
    let (id, flags, qd, an) = (be(0), be(2), be(4), be(6));
    if qd == 0 {
        return Err(WireError::NoQuestion);
    }
    let mut name = String::new();
    let mut i = HEADER;
    let mut wire = 0usize;
    loop {
        let &len = data.get(i).ok_or(WireError::Truncated)?;
        i += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 || len > 63 {
            return Err(WireError::BadLabel);
        }
        let label = data.get(i..i + usize::from(len)).ok_or(WireError::Truncated)?;
        wire += usize::from(len) + 1;
        if wire > MAX_NAME {
            return Err(WireError::NameTooLong);
        }
        if !label.iter().all(|b| b.is_ascii_graphic() && *b != b'.') {
            return Err(WireError::BadLabel);
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
        i += usize::from(len);
    }
    let qtype =
        data.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(WireError::Truncated)?;
    if name.is_empty() {
        name.push('.');
    }
    Ok(Message {
        id,
        response: flags & 0x8000 != 0,
        rcode: (flags & 0x000f) as u8,
        qname: name,
        qtype,
        answers: an,
    })
}

/// Name of a response code (bounded label values).
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "other",
    }
}

/// Name of a query type (bounded label values).
pub fn qtype_name(t: u16) -> &'static str {
    match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        65 => "HTTPS",
        _ => "other",
    }
}

#[cfg(test)]
pub(crate) fn query(id: u16, name: &str, qtype: u16, flags: u16) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [id, flags, 1, 0, 0, 0] {
        m.extend(v.to_be_bytes());
    }
    for l in name.split('.').filter(|l| !l.is_empty()) {
        m.push(l.len() as u8);
        m.extend(l.as_bytes());
    }
    m.push(0);
    m.extend(qtype.to_be_bytes());
    m.extend(1u16.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query_and_response() {
        let q = query(0x1234, "Login.Example.TEST", 1, 0x0100);
        let m = parse(&q, false, q.len()).expect("query");
        assert_eq!(
            (m.id, m.response, m.rcode, m.qname.as_str(), m.qtype),
            (0x1234, false, 0, "login.example.test", 1)
        );
        let r = query(0x1234, "gone.example.test", 28, 0x8183);
        let m = parse(&r, false, r.len()).expect("response");
        assert!(m.response);
        assert_eq!((rcode_name(m.rcode), qtype_name(m.qtype)), ("NXDOMAIN", "AAAA"));
        let mut t = (r.len() as u16).to_be_bytes().to_vec();
        t.extend(&r);
        assert_eq!(parse(&t, true, t.len()).map(|m| m.rcode), Ok(3));
    }

    #[test]
    fn bounded_and_typed_failures() {
        assert_eq!(parse(&[0; 5], false, 5), Err(WireError::Short));
        let mut q = query(1, "a.test", 1, 0);
        q[5] = 0;
        assert_eq!(parse(&q, false, q.len()), Err(WireError::NoQuestion));
        let q = query(1, "a-long-label.test", 1, 0);
        assert_eq!(
            parse(&q[..16], false, q.len()),
            Err(WireError::Truncated),
            "cut by the capture"
        );
        let mut p = query(1, "a.test", 1, 0);
        p[12] = 0xc0;
        assert_eq!(
            parse(&p, false, p.len()),
            Err(WireError::BadLabel),
            "compression pointer in a question"
        );
        let long = vec!["abcdefghij"; 30].join(".");
        let q = query(1, &long, 1, 0);
        assert_eq!(parse(&q, false, q.len()), Err(WireError::NameTooLong));
        let q = query(1, "a.test", 1, 0);
        assert_eq!(
            parse(&q, true, q.len()),
            Err(WireError::TcpLength),
            "a TCP segment that does not start a message"
        );
        let mut bad = query(1, "a b.test", 1, 0);
        bad[14] = b' ';
        assert_eq!(parse(&bad, false, bad.len()), Err(WireError::BadLabel));
        assert_eq!(parse(&query(9, "", 2, 0), false, 17).map(|m| m.qname), Ok(".".into()));
    }
}
