//! Real captures (tests/fixtures/tls, see its README) plus synthetic hellos for
//! the grammar's corners, truncations and brute-force mutations.
use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/", $name))
    };
}

const OPENSSL_TLS13: &[u8] = fixture!("client_openssl_tls13_sni_alpn.bin");
const CURL_TLS13: &[u8] = fixture!("client_curl_tls13.bin");
const OPENSSL_TLS12: &[u8] = fixture!("client_openssl_tls12_only.bin");
const OPENSSL_NO_SNI: &[u8] = fixture!("client_openssl_no_sni.bin");
const OPENSSL_MULTIRECORD: &[u8] = fixture!("client_openssl_multirecord.bin");
const CURL_CONNECT: &[u8] = fixture!("client_curl_connect_tunnel.bin");
const SERVER_TLS13: &[u8] = fixture!("server_openssl_tls13_start.bin");
const SERVER_TLS12: &[u8] = fixture!("server_openssl_tls12_start.bin");
const ALERT_40: &[u8] = fixture!("server_alert_handshake_failure.bin");
const ALERT_70: &[u8] = fixture!("server_alert_protocol_version.bin");
const ALERT_112: &[u8] = fixture!("server_alert_unrecognized_name.bin");
const ALERT_120: &[u8] = fixture!("server_alert_no_application_protocol.bin");
const HTTP_REPLY: &[u8] = fixture!("server_http_error_reply.bin");

const ALL_VERSIONS: [u16; 4] = [0x0304, 0x0303, 0x0302, 0x0301];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ok(bytes: &[u8]) -> ClientHello {
    parse_client_hello(bytes).unwrap_or_else(|e| panic!("{e} on {} bytes", bytes.len()))
}

/// The tunnel part of the CONNECT capture.
fn connect_hello() -> &'static [u8] {
    let at =
        CURL_CONNECT.windows(4).position(|w| w == b"\r\n\r\n").expect("CONNECT headers end") + 4;
    &CURL_CONNECT[at..]
}

/// name, bytes, SNI, ALPN, supported_versions.
type HelloCase = (&'static str, &'static [u8], Option<&'static str>, Vec<String>, &'static [u16]);

#[test]
fn real_client_hellos() {
    let thirty: Vec<String> =
        (0..30).map(|i| format!("proto-{i:02}-abcdefghijklmnopqrstuvwxyz")).collect();
    let cases: [HelloCase; 6] = [
        (
            "openssl 3.0 TLS 1.3",
            OPENSSL_TLS13,
            Some("x.test"),
            strings(&["h2", "http/1.1"]),
            &ALL_VERSIONS,
        ),
        ("curl 7.88", CURL_TLS13, Some("x.test"), strings(&["h2", "http/1.1"]), &ALL_VERSIONS),
        ("openssl -tls1_2", OPENSSL_TLS12, Some("legacy.test"), vec![], &[]),
        ("openssl -noservername", OPENSSL_NO_SNI, None, vec![], &ALL_VERSIONS),
        ("openssl, 3 records", OPENSSL_MULTIRECORD, Some("big.test"), thirty, &ALL_VERSIONS),
        (
            "curl inside CONNECT",
            connect_hello(),
            Some("api.external.test"),
            strings(&["h2", "http/1.1"]),
            &ALL_VERSIONS,
        ),
    ];
    for (name, bytes, sni, alpn, versions) in cases {
        let h = parse_client_hello(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = ClientHello {
            record_version: 0x0301,
            legacy_version: 0x0303,
            sni: sni.map(String::from),
            alpn,
            supported_versions: versions.to_vec(),
            ech: false,
            truncated: false,
        };
        assert_eq!(h, want, "{name}");
    }
    assert_eq!(ok(OPENSSL_TLS12).max_version(), 0x0303);
    assert_eq!(ok(CURL_TLS13).max_version(), 0x0304);
    // Bytes after the hello (the client's next records) are ignored.
    let mut more = OPENSSL_TLS13.to_vec();
    more.extend_from_slice(&[20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
    assert_eq!(parse_client_hello(&more), parse_client_hello(OPENSSL_TLS13));
}

/// Every prefix of every real hello: `Incomplete` until the server_name
/// extension is read, then `Ok` with the final SNI; never another error.
#[test]
fn every_truncation_of_real_hellos() {
    for bytes in [
        OPENSSL_TLS13,
        CURL_TLS13,
        OPENSSL_TLS12,
        OPENSSL_NO_SNI,
        OPENSSL_MULTIRECORD,
        connect_hello(),
    ] {
        let full = ok(bytes);
        let mut seen_sni_at = None;
        for n in 0..bytes.len() {
            match parse_client_hello(&bytes[..n]) {
                Err(TlsParseError::Incomplete { needed }) => {
                    assert!(seen_sni_at.is_none(), "SNI lost again at {n}");
                    if let Some(needed) = needed {
                        assert!(
                            needed > n && needed <= bytes.len(),
                            "needed {needed} at {n} of {}",
                            bytes.len()
                        );
                    }
                }
                Ok(h) => {
                    assert!(h.truncated, "complete at {n} of {}", bytes.len());
                    assert_eq!(h.sni, full.sni);
                    seen_sni_at.get_or_insert(n);
                }
                Err(e) => panic!("{e} at {n} of {}", bytes.len()),
            }
        }
        assert_eq!(
            seen_sni_at.is_some(),
            full.sni.is_some(),
            "openssl and curl send server_name early"
        );
    }
    // A single-record hello says exactly how long it is.
    assert_eq!(
        parse_client_hello(&CURL_TLS13[..100]),
        Err(TlsParseError::Incomplete { needed: Some(CURL_TLS13.len()) })
    );
    assert_eq!(
        parse_client_hello(&CURL_TLS13[..3]),
        Err(TlsParseError::Incomplete { needed: None })
    );
}

#[test]
fn one_kib_capture_of_a_larger_multi_record_hello() {
    assert!(OPENSSL_MULTIRECORD.len() > 1024 && OPENSSL_MULTIRECORD[517] == CONTENT_HANDSHAKE);
    let h = ok(&OPENSSL_MULTIRECORD[..1024]);
    assert_eq!(h.sni.as_deref(), Some("big.test"));
    assert!(h.truncated);
    assert!(h.alpn.is_empty(), "the ALPN list is cut: not reported half");
}

// ---- synthetic hellos for the corners -------------------------------------

fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut v = kind.to_be_bytes().to_vec();
    v.extend((data.len() as u16).to_be_bytes());
    v.extend(data);
    v
}

fn u16_vec(data: &[u8]) -> Vec<u8> {
    let mut v = (data.len() as u16).to_be_bytes().to_vec();
    v.extend(data);
    v
}

fn sni(names: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for n in names {
        list.push(0);
        list.extend(u16_vec(n));
    }
    ext(0, &u16_vec(&list))
}

/// A ClientHello body with the given raw extension block (None: no block).
fn body(exts: Option<&[u8]>) -> Vec<u8> {
    let mut b = vec![3, 3];
    b.extend([7u8; 32]);
    b.push(0); // session_id
    b.extend([0, 2, 0x13, 0x01]); // one cipher suite
    b.extend([1, 0]); // null compression
    if let Some(e) = exts {
        b.extend(u16_vec(e));
    }
    b
}

/// Wraps a body in a handshake header and records of at most `max` bytes.
fn records(body: &[u8], max: usize) -> Vec<u8> {
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut out = Vec::new();
    for chunk in hs.chunks(max) {
        out.extend([22, 3, 1]);
        out.extend((chunk.len() as u16).to_be_bytes());
        out.extend(chunk);
    }
    out
}

fn hello(exts: &[Vec<u8>]) -> Vec<u8> {
    records(&body(Some(&exts.concat())), 1 << 14)
}

#[test]
fn sni_behind_a_large_extension_needs_more_than_one_kib() {
    let bytes = hello(&[ext(21, &[0; 1100]), sni(&[b"late.test"])]);
    assert_eq!(
        parse_client_hello(&bytes[..1024]),
        Err(TlsParseError::Incomplete { needed: Some(bytes.len()) })
    );
    assert_eq!(ok(&bytes).sni.as_deref(), Some("late.test"));
    // Split into small records: same answer, reassembled.
    let split = records(&body(Some(&[ext(21, &[0; 1100]), sni(&[b"late.test"])].concat())), 100);
    assert_eq!(ok(&split).sni.as_deref(), Some("late.test"));
    assert!(
        matches!(parse_client_hello(&split[..1024]), Err(TlsParseError::Incomplete { needed: Some(n) }) if n <= split.len())
    );
}

#[test]
fn grease_ech_and_extensionless_hellos() {
    let h = ok(&hello(&[
        ext(0x1a1a, &[]),
        sni(&[b"Mixed.Case.test"]),
        ext(43, &[6, 0x2a, 0x2a, 3, 4, 3, 3]),
        ext(0xfe0d, &[0; 8]),
    ]));
    assert_eq!(h.sni.as_deref(), Some("Mixed.Case.test"));
    assert_eq!(h.supported_versions, [0x0304, 0x0303]);
    assert!(h.ech);
    // No extension block at all: complete, definitively without SNI.
    let h = ok(&records(&body(None), 1 << 14));
    assert_eq!((h.sni, h.truncated), (None, false));
    // Unknown name types are skipped; an SNI extension without host_name is no SNI.
    let other_type = ext(0, &u16_vec(&[1, 0, 2, b'a', b'b']));
    assert_eq!(ok(&hello(&[other_type])).sni, None);
    assert!(is_grease(0x0a0a) && is_grease(0xfafa) && !is_grease(0x0a1a) && !is_grease(0x0304));
}

#[test]
fn malformed_hellos_say_why() {
    let m = |bytes: &[u8]| match parse_client_hello(bytes) {
        Err(TlsParseError::Malformed(why)) => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        m(&hello(&[sni(&[b"a.test"]), sni(&[b"b.test"])])),
        "server_name extension repeated"
    );
    assert_eq!(m(&hello(&[sni(&[b"a.test", b"b.test"])])), "two host_name entries in server_name");
    for bad in [&b""[..], b"a b", b"caf\xc3\xa9.test", b"a\0b", &[b'a'; 256]] {
        assert_eq!(m(&hello(&[sni(&[bad])])), "server_name host_name is not an ASCII host name");
    }
    assert_eq!(m(&hello(&[ext(0, &[])])), "server_name list runs past its extension");
    assert_eq!(
        m(&hello(&[ext(0, &[0, 0])])),
        "server_name list empty or not filling its extension"
    );
    assert_eq!(m(&hello(&[ext(16, &u16_vec(&[0]))])), "empty ALPN protocol name");
    assert_eq!(
        m(&hello(&[ext(16, &u16_vec(&[2, b'h', b'2'])), ext(16, &u16_vec(&[2, b'h', b'2']))])),
        "ALPN extension repeated"
    );
    assert_eq!(
        m(&hello(&[ext(43, &[3, 3, 4, 3])])),
        "supported_versions list empty, odd or not filling its extension"
    );
    // An extension claiming more than the block holds; bytes after the block.
    let mut long = hello(&[ext(21, &[0; 4])]);
    long[9 + 41 + 2 + 3] = 9;
    assert_eq!(m(&long), "extension runs past the extensions");
    let mut trailing = body(Some(&ext(21, &[])));
    trailing.push(0);
    assert_eq!(m(&records(&trailing, 1 << 14)), "bytes after the extensions");
    // Fixed fields.
    let mut b = body(None);
    b[34] = 33;
    b.extend([0; 33]);
    assert_eq!(m(&records(&b, 1 << 14)), "session_id longer than 32 bytes");
    let mut b = body(None);
    b[36] = 3;
    b.push(0);
    assert_eq!(m(&records(&b, 1 << 14)), "cipher_suites empty or of odd length");
    let mut b = body(None);
    b[39] = 0;
    b.pop();
    b.extend([0; 2]);
    assert_eq!(m(&records(&b, 1 << 14)), "no compression method");
    let mut b = body(None);
    b[0] = 2;
    assert_eq!(m(&records(&b, 1 << 14)), "client_version is not 3.x");
    assert_eq!(m(&records(&[3, 3, 0], 1 << 14)), "ClientHello shorter than its fixed fields");
    // Record layer.
    assert_eq!(m(&[22, 3, 1, 0, 0]), "empty handshake record");
    assert_eq!(m(&[22, 3, 1, 0x40, 1]), "record longer than 2^14 bytes");
    let mut interrupted = records(&body(None), 20);
    interrupted[25] = CONTENT_ALERT;
    assert_eq!(m(&interrupted), "ClientHello interrupted by a non-handshake record");
}

#[test]
fn not_tls_and_not_a_client_hello() {
    for bytes in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"SSH-2.0-OpenSSH_9.2\r\n",
        &[0x80, 0x2e, 1, 3, 1],
        &[22, 2],
        &[22, 3, 9],
        &[23, 3, 3, 0, 2],
    ] {
        assert_eq!(parse_client_hello(bytes), Err(TlsParseError::NotTls), "{bytes:?}");
    }
    assert_eq!(
        parse_client_hello(SERVER_TLS13),
        Err(TlsParseError::NotClientHello { handshake_type: 2 })
    );
    for prefix in
        [&[][..], &[22], &[22, 3], &[22, 3, 1], &[22, 3, 1, 1, 0], &[22, 3, 1, 1, 0, 1, 0]]
    {
        assert!(
            matches!(parse_client_hello(prefix), Err(TlsParseError::Incomplete { .. })),
            "{prefix:?}"
        );
    }
}

#[test]
fn server_starts() {
    assert_eq!(classify_server_start(SERVER_TLS13), TlsOutcome::Handshake);
    assert_eq!(classify_server_start(SERVER_TLS12), TlsOutcome::Handshake);
    let fatal = |description| TlsOutcome::Alert { level: AlertLevel::Fatal, description };
    assert_eq!(classify_server_start(ALERT_40), fatal(40));
    assert_eq!(classify_server_start(ALERT_70), fatal(70));
    assert_eq!(classify_server_start(ALERT_112), fatal(112));
    assert_eq!(classify_server_start(ALERT_120), fatal(120));
    assert_eq!(fatal(112).to_string(), "fatal alert unrecognized_name (112)");
    assert_eq!(
        classify_server_start(&[21, 3, 1, 0, 2, 1, 112]).to_string(),
        "warning alert unrecognized_name (112)"
    );
    assert_eq!(classify_server_start(HTTP_REPLY), TlsOutcome::NotTls);
    assert_eq!(classify_server_start(b"HTTP/1.1 403 Forbidden\r\n"), TlsOutcome::NotTls);
    assert_eq!(
        classify_server_start(&[20, 3, 3, 0, 1, 1]),
        TlsOutcome::Unexpected { content_type: 20 }
    );
    assert_eq!(
        classify_server_start(&[23, 3, 3, 0, 19]),
        TlsOutcome::Unexpected { content_type: 23 }
    );
    assert_eq!(
        classify_server_start(&[21, 3, 3, 0, 19, 0]),
        TlsOutcome::Unexpected { content_type: 21 }
    );
    assert_eq!(classify_server_start(&[22, 3, 3, 0, 0]), TlsOutcome::NotTls);
    assert_eq!(classify_server_start(&[22, 3, 3, 0xff, 0xff]), TlsOutcome::NotTls);
    for n in 0..5 {
        assert_eq!(classify_server_start(&SERVER_TLS13[..n]), TlsOutcome::Incomplete, "{n}");
    }
    assert_eq!(classify_server_start(&ALERT_112[..6]), TlsOutcome::Incomplete);
    assert_eq!(classify_server_start(&[22, 4]), TlsOutcome::NotTls);
    assert_eq!(
        (alert_name(40), alert_name(112), alert_name(7)),
        (Some("handshake_failure"), Some("unrecognized_name"), None)
    );
    assert_eq!((version_name(0x0304), version_name(0x7f17)), (Some("TLSv1.3"), None));
}

#[test]
fn hello_inside_a_connect_tunnel() {
    let h =
        client_hello_after_connect(CURL_CONNECT).expect("a tunnel payload").expect("a ClientHello");
    assert_eq!(h.sni.as_deref(), Some("api.external.test"));
    let head = CURL_CONNECT.len() - connect_hello().len();
    assert_eq!(
        client_hello_after_connect(&CURL_CONNECT[..head]),
        None,
        "nothing sent in the tunnel yet"
    );
    assert_eq!(client_hello_after_connect(&CURL_CONNECT[..head - 1]), None, "headers not finished");
    assert_eq!(
        client_hello_after_connect(&CURL_CONNECT[..head + 50]),
        Some(Err(TlsParseError::Incomplete { needed: Some(517) }))
    );
    let lf = [&b"CONNECT a.test:443 HTTP/1.1\nHost: a.test:443\n\n"[..], connect_hello()].concat();
    assert_eq!(
        client_hello_after_connect(&lf)
            .expect("a tunnel payload")
            .expect("a ClientHello")
            .sni
            .as_deref(),
        Some("api.external.test")
    );
    assert_eq!(
        client_hello_after_connect(b"CONNECT a:443 HTTP/1.1\r\n\r\nSSH-2.0-x\r\n"),
        Some(Err(TlsParseError::NotTls))
    );
    assert_eq!(
        client_hello_after_connect(
            &[&b"GET http://a/ HTTP/1.1\r\n\r\n"[..], OPENSSL_TLS13].concat()
        ),
        None
    );
    assert_eq!(client_hello_after_connect(OPENSSL_TLS13), None);
}

/// xorshift64*: deterministic pseudo-random bytes without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn exercise(bytes: &[u8]) {
    let _ = parse_client_hello(bytes);
    let _ = classify_server_start(bytes);
    let _ = client_hello_after_connect(bytes);
}

/// Single-byte mutations at every position of every real capture, then random
/// multi-byte mutations with random truncation: nothing panics.
#[test]
fn brute_force_mutations_never_panic() {
    let captures = [
        OPENSSL_TLS13,
        CURL_TLS13,
        OPENSSL_TLS12,
        OPENSSL_NO_SNI,
        OPENSSL_MULTIRECORD,
        CURL_CONNECT,
        SERVER_TLS13,
        SERVER_TLS12,
        ALERT_112,
    ];
    let mut runs = 0;
    for capture in captures {
        let mut m = capture.to_vec();
        for i in 0..m.len() {
            let orig = m[i];
            for v in [0, 1, 0x7f, 0xff, orig ^ 1, orig.wrapping_add(1), orig.wrapping_sub(1)] {
                m[i] = v;
                exercise(&m);
                runs += 1;
            }
            m[i] = orig;
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let base = captures[rng.below(captures.len())];
        let mut m = base.to_vec();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(m.len());
            m[at] = rng.next() as u8;
        }
        m.truncate(rng.below(m.len() + 1));
        exercise(&m);
        // And the same bytes with the handshake header intact but lengths maxed.
        if m.len() > 12 {
            m[3..5].copy_from_slice(&[0x40, 0x00]);
            m[6..9].copy_from_slice(&[0xff, 0xff, 0xff]);
            exercise(&m);
        }
        runs += 1;
    }
    assert!(runs > 40_000);
}
