//! Tracepoint record layouts from tracefs `events/<cat>/<name>/format`.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use egress_common::{OFFSET_ABSENT, TpOffsets};

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "tracefs is not mounted (tried /sys/kernel/tracing and /sys/kernel/debug/tracing); mount it with `mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    NotMounted,
    #[error("tracepoint {0} does not exist on this kernel")]
    Missing(String),
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("field `{0}` absent from the tracepoint record")]
    NoField(String),
    #[error("field `{field}` has size {size}, expected {expected}")]
    BadSize { field: String, size: u16, expected: u16 },
    #[error("malformed format line: {0}")]
    Malformed(String),
}

/// A located tracefs mount.
#[derive(Debug, Clone)]
pub struct TraceFs {
    pub root: PathBuf,
}

impl TraceFs {
    /// Find a mounted tracefs. As root, mount it at /sys/kernel/tracing if
    /// nothing is mounted (the usual state of a fresh container or VM).
    pub fn locate() -> Result<Self, FormatError> {
        for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
            if Path::new(p).join("events").is_dir() {
                return Ok(Self { root: PathBuf::from(p) });
            }
        }
        let target = c"/sys/kernel/tracing";
        // SAFETY: plain mount(2) with static C strings.
        let rc = unsafe {
            libc::mount(
                c"nodev".as_ptr(),
                target.as_ptr(),
                c"tracefs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc == 0 && Path::new("/sys/kernel/tracing/events").is_dir() {
            return Ok(Self { root: PathBuf::from("/sys/kernel/tracing") });
        }
        Err(FormatError::NotMounted)
    }

    pub fn exists(&self, category: &str, name: &str) -> bool {
        self.root.join("events").join(category).join(name).is_dir()
    }

    pub fn format(&self, category: &str, name: &str) -> Result<TracepointFormat, FormatError> {
        let path = self.root.join("events").join(category).join(name).join("format");
        if !path.exists() {
            return Err(FormatError::Missing(format!("{category}/{name}")));
        }
        let text = fs::read_to_string(&path).map_err(|source| FormatError::Io { path, source })?;
        TracepointFormat::parse(&text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u16,
    pub size: u16,
}

/// Parsed `format` file: field name → offset and size.
#[derive(Debug, Default, Clone)]
pub struct TracepointFormat {
    pub fields: HashMap<String, Field>,
}

impl TracepointFormat {
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut fields = HashMap::new();
        for line in text.lines().map(str::trim).filter(|l| l.starts_with("field:")) {
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d);
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse::<u16>().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse::<u16>().ok();
                }
            }
            let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
                return Err(FormatError::Malformed(line.to_string()));
            };
            // "const void * skaddr", "__u8 saddr[4]", "__data_loc char[] name"
            let last = decl.rsplit([' ', '*']).next().unwrap_or(decl);
            let name = last.split('[').next().unwrap_or(last);
            if name.is_empty() {
                return Err(FormatError::Malformed(line.to_string()));
            }
            fields.insert(name.to_string(), Field { offset, size });
        }
        Ok(Self { fields })
    }

    pub fn field(&self, name: &str) -> Result<Field, FormatError> {
        self.fields.get(name).copied().ok_or_else(|| FormatError::NoField(name.to_string()))
    }

    /// Offset of a field that must have `expected` bytes.
    pub fn sized(&self, name: &str, expected: u16) -> Result<u16, FormatError> {
        let f = self.field(name)?;
        if f.size != expected {
            return Err(FormatError::BadSize { field: name.to_string(), size: f.size, expected });
        }
        Ok(f.offset)
    }

    fn opt(&self, name: &str, expected: u16) -> Result<u16, FormatError> {
        match self.sized(name, expected) {
            Err(FormatError::NoField(_)) => Ok(OFFSET_ABSENT),
            r => r,
        }
    }

    /// Offsets of a TCP tracepoint carrying `skaddr` and the address tuple.
    /// `required` extra int fields (4 bytes; `protocol` is 2) and an optional
    /// `state` field name.
    pub fn tcp_offsets(
        &self,
        required: &[&str],
        state: Option<&str>,
    ) -> Result<TpOffsets, FormatError> {
        let mut o = TpOffsets::ABSENT;
        o.skaddr = self.sized("skaddr", 8)?;
        self.tuple_into(&mut o)?;
        for &r in required {
            match r {
                "oldstate" => o.oldstate = self.sized(r, 4)?,
                "newstate" => o.newstate = self.sized(r, 4)?,
                "protocol" => o.protocol = self.sized(r, 2)?,
                _ => {}
            }
        }
        if let Some(s) = state {
            o.state = self.sized(s, 4)?;
        }
        Ok(o)
    }

    fn tuple_into(&self, o: &mut TpOffsets) -> Result<(), FormatError> {
        o.sport = self.sized("sport", 2)?;
        o.dport = self.sized("dport", 2)?;
        // Absent from tcp:* before Linux 5.12: the programs then tell the
        // family from saddr_v6 (v4-mapped for IPv4 sockets).
        o.family = self.opt("family", 2)?;
        o.saddr = self.sized("saddr", 4)?;
        o.daddr = self.sized("daddr", 4)?;
        o.saddr_v6 = self.opt("saddr_v6", 16)?;
        o.daddr_v6 = self.opt("daddr_v6", 16)?;
        if o.family == OFFSET_ABSENT && o.saddr_v6 == OFFSET_ABSENT {
            return Err(FormatError::NoField("family".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Verbatim from Linux 6.18's events/sock/inet_sock_set_state/format.
    const SET_STATE: &str = "name: inet_sock_set_state
ID: 1519
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s\"
";

    #[test]
    fn parses_set_state() {
        let f = TracepointFormat::parse(SET_STATE).expect("parse");
        let o = f.tcp_offsets(&["oldstate", "newstate", "protocol"], None).expect("offsets");
        assert_eq!((o.skaddr, o.oldstate, o.newstate, o.sport, o.dport), (8, 16, 20, 24, 26));
        assert_eq!(
            (o.family, o.protocol, o.saddr, o.daddr, o.saddr_v6, o.daddr_v6),
            (28, 30, 32, 36, 40, 56)
        );
        assert_eq!(o.state, OFFSET_ABSENT);
    }

    #[test]
    fn shifted_layout_follows_the_file() {
        // Same fields, different kernel: everything moved by 8 bytes.
        let shifted = SET_STATE
            .lines()
            .map(|l| {
                if let Some(i) = l.find("offset:") {
                    let rest = &l[i + 7..];
                    let n: u16 = rest[..rest.find(';').expect(";")].parse().expect("n");
                    if n >= 8 {
                        return l.replacen(
                            &format!("offset:{n};"),
                            &format!("offset:{};", n + 8),
                            1,
                        );
                    }
                }
                l.to_string()
            })
            .collect::<Vec<_>>()
            .join("\n");
        let o = TracepointFormat::parse(&shifted)
            .expect("parse")
            .tcp_offsets(&["oldstate"], None)
            .expect("o");
        assert_eq!((o.skaddr, o.oldstate, o.daddr_v6), (16, 24, 64));
    }

    #[test]
    fn family_optional_when_v6_addresses_tell_it() {
        // Linux 5.10's tcp:* records have no `family`.
        let f = TracepointFormat::parse(
            &SET_STATE.replace("\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n", ""),
        )
        .expect("parse");
        let o = f.tcp_offsets(&[], None).expect("offsets without family");
        assert_eq!((o.family, o.saddr_v6), (OFFSET_ABSENT, 40));
        let neither = SET_STATE
            .replace("\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n", "")
            .replace("saddr_v6", "x6");
        assert!(TracepointFormat::parse(&neither).expect("parse").tcp_offsets(&[], None).is_err());
    }

    #[test]
    fn missing_and_wrong_size_fields_are_errors() {
        let f = TracepointFormat::parse("\tfield:__u16 sport;\toffset:8;\tsize:2;\tsigned:0;\n")
            .expect("parse");
        assert!(matches!(f.tcp_offsets(&[], None), Err(FormatError::NoField(n)) if n == "skaddr"));
        let f = TracepointFormat::parse(&SET_STATE.replace(
            "\tfield:__u16 family;\toffset:28;\tsize:2;",
            "\tfield:__u32 family;\toffset:28;\tsize:4;",
        ))
        .expect("parse");
        assert!(matches!(f.tcp_offsets(&[], None), Err(FormatError::BadSize { .. })));
    }

    #[test]
    fn malformed_line_is_an_error() {
        assert!(matches!(
            TracepointFormat::parse("\tfield:int x;\toffset:zz;\tsize:4;\n"),
            Err(FormatError::Malformed(_))
        ));
    }
}
