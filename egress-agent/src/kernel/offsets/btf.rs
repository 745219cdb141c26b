//! A small reader of kernel BTF (`/sys/kernel/btf/vmlinux`): just enough to
//! find the byte offset of a struct member, through anonymous structs and
//! unions and through typedef/const/volatile chains.
//!
//! Module BTF (`/sys/kernel/btf/<module>`, Linux 5.11+ with
//! `CONFIG_DEBUG_INFO_BTF_MODULES`) is *split* BTF: it only makes sense on
//! top of vmlinux's. Its type ids continue after the base's last id and its
//! string offsets after the end of the base's string section, so the two
//! parse into one id space and one string table ([`Btf::parse_split`]).
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

/// A BTF file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum BtfFileError {
    #[error("reading {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Parse(#[from] BtfError),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("BTF blob truncated at byte {0}")]
    Truncated(usize),
    #[error("not a BTF blob (magic {0:#06x})")]
    BadMagic(u16),
    #[error("unknown BTF kind {0}")]
    UnknownKind(u32),
    #[error("struct {0} not found")]
    NoStruct(String),
    #[error("member {0} not found")]
    NoMember(String),
    #[error("member {0} is a bitfield or not byte aligned")]
    Unaligned(String),
    #[error("member {0} is not a struct or union")]
    NotComposite(String),
    #[error("member {0} is not an array of sized elements")]
    NotArray(String),
    #[error("type {0} refers to type {1}, beyond the last id")]
    Dangling(u32, u32),
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Offset in bits.
    bit_offset: u32,
    bitfield: bool,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// Referenced type for modifiers/typedefs, element type for arrays,
    /// size in bytes for structs/unions/ints.
    ty: u32,
    members: Vec<Member>,
}

/// Parsed BTF: types by id (id 0 = void) and a name index of structs.
#[derive(Debug)]
pub struct Btf {
    strings: Vec<u8>,
    types: Vec<Type>,
    structs: HashMap<String, u32>,
}

fn read(path: &Path) -> Result<Vec<u8>, BtfFileError> {
    fs::read(path).map_err(|source| BtfFileError::Read { path: path.to_path_buf(), source })
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Truncated(off))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfFileError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfFileError> {
        Ok(Self::parse(&read(path)?)?)
    }

    /// A module's split BTF (e.g. `/sys/kernel/btf/nf_conntrack`) on top of
    /// `self` (vmlinux).
    pub fn with_module_file(&self, path: &Path) -> Result<Self, BtfFileError> {
        Ok(Self::parse_split(&read(path)?, self)?)
    }

    /// Parse a little-endian BTF blob.
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        Self::parse_on(b, None)
    }

    /// Parse split BTF over `base`: the result holds the base's types and
    /// strings followed by the split blob's, so ids and string offsets of
    /// both resolve in it.
    pub fn parse_split(b: &[u8], base: &Btf) -> Result<Self, BtfError> {
        Self::parse_on(b, Some(base))
    }

    fn parse_on(b: &[u8], base: Option<&Btf>) -> Result<Self, BtfError> {
        let magic =
            b.get(0..2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or(BtfError::Truncated(0))?;
        if magic != 0xeb9f {
            return Err(BtfError::BadMagic(magic));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let s0 = hdr_len + str_off;
        let own_strings = b.get(s0..s0 + str_len).ok_or(BtfError::Truncated(s0))?;
        let mut strings = base.map_or_else(Vec::new, |base| base.strings.clone());
        strings.extend_from_slice(own_strings);
        let t0 = hdr_len + type_off;
        let tend = t0 + type_len;
        if b.len() < tend {
            return Err(BtfError::Truncated(tend));
        }
        let mut types = match base {
            Some(base) => base.types.clone(),
            None => vec![Type { name: 0, kind: 0, ty: 0, members: vec![] }],
        };
        let mut off = t0;
        while off < tend {
            let name = u32_at(b, off)?;
            let info = u32_at(b, off + 4)?;
            let size_or_type = u32_at(b, off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let mut ty = size_or_type;
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => off += 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                KIND_ARRAY => {
                    ty = u32_at(b, off)?;
                    off += 12;
                }
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let raw = u32_at(b, off + 8)?;
                        let (bit_offset, bitfield) = if kind_flag {
                            (raw & 0xff_ffff, raw >> 24 != 0)
                        } else {
                            (raw, false)
                        };
                        members.push(Member {
                            name: u32_at(b, off)?,
                            ty: u32_at(b, off + 4)?,
                            bit_offset,
                            bitfield,
                        });
                        off += 12;
                    }
                }
                KIND_ENUM | KIND_FUNC_PROTO => off += 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => off += 12 * vlen,
                k => return Err(BtfError::UnknownKind(k)),
            }
            types.push(Type { name, kind, ty, members });
        }
        // Every reference must land on a type of this blob or its base: a
        // split blob read with the wrong first id fails here.
        for (id, t) in types.iter().enumerate() {
            let refs = matches!(
                t.kind,
                KIND_PTR
                    | KIND_ARRAY
                    | KIND_TYPEDEF
                    | KIND_VOLATILE
                    | KIND_CONST
                    | KIND_RESTRICT
                    | KIND_TYPE_TAG
            );
            let bad = t
                .members
                .iter()
                .map(|m| m.ty)
                .chain(refs.then_some(t.ty))
                .find(|&r| r as usize >= types.len());
            if let Some(r) = bad {
                return Err(BtfError::Dangling(id as u32, r));
            }
        }
        let mut btf = Self { strings, types, structs: HashMap::new() };
        let mut structs = HashMap::new();
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name != 0 {
                structs.entry(btf.str_at(t.name).to_string()).or_insert(id as u32);
            }
        }
        btf.structs = structs;
        Ok(btf)
    }

    /// Number of type ids, void (0) included: a split blob's first id.
    pub fn type_count(&self) -> usize {
        self.types.len()
    }

    /// Whether a named struct (not just a forward declaration) is described.
    pub fn has_struct(&self, name: &str) -> bool {
        self.structs.contains_key(name)
    }

    fn str_at(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Follow typedef / const / volatile / restrict / type tags.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.ty
                }
                _ => break,
            }
        }
        id
    }

    /// Bit offset of `name` inside composite type `id`, searching anonymous
    /// struct/union members too. Returns (bit offset, member type id, bitfield).
    fn find(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32, bool)> {
        let t = self.types.get(id as usize)?;
        for m in &t.members {
            if m.name != 0 && self.str_at(m.name) == name {
                return Some((m.bit_offset, m.ty, m.bitfield));
            }
        }
        if depth > 8 {
            return None;
        }
        for m in t.members.iter().filter(|m| m.name == 0) {
            let inner = self.resolve(m.ty);
            if let Some((off, ty, bf)) = self.find(inner, name, depth + 1) {
                return Some((m.bit_offset + off, ty, bf));
            }
        }
        None
    }

    /// Byte offset of `path` (e.g. `["ns", "inum"]`) inside `struct st`.
    pub fn member_offset(&self, st: &str, path: &[&str]) -> Result<u32, BtfError> {
        self.member(st, path).map(|(off, _)| off)
    }

    /// Size in bytes of one element of the array member `path` of `struct st`
    /// (the distance from `arr[0]` to `arr[1]`).
    pub fn array_elem_size(&self, st: &str, path: &[&str]) -> Result<u32, BtfError> {
        let (_, id) = self.member(st, path)?;
        let name = || path.join(".");
        let arr = self
            .types
            .get(id as usize)
            .filter(|t| t.kind == KIND_ARRAY)
            .ok_or_else(|| BtfError::NotArray(name()))?;
        match self.types.get(self.resolve(arr.ty) as usize) {
            Some(t) if matches!(t.kind, KIND_STRUCT | KIND_UNION | KIND_INT) && t.ty > 0 => {
                Ok(t.ty)
            }
            _ => Err(BtfError::NotArray(name())),
        }
    }

    /// Byte offset and (resolved) type id of `path` inside `struct st`.
    fn member(&self, st: &str, path: &[&str]) -> Result<(u32, u32), BtfError> {
        let mut id = *self.structs.get(st).ok_or_else(|| BtfError::NoStruct(st.to_string()))?;
        let mut bits = 0u32;
        for (i, &name) in path.iter().enumerate() {
            let t = self
                .types
                .get(id as usize)
                .ok_or_else(|| BtfError::NotComposite(name.to_string()))?;
            if !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
                return Err(BtfError::NotComposite(path[..i].join(".")));
            }
            let (off, ty, bitfield) =
                self.find(id, name, 0).ok_or_else(|| BtfError::NoMember(name.to_string()))?;
            if bitfield || off % 8 != 0 {
                return Err(BtfError::Unaligned(name.to_string()));
            }
            bits += off;
            id = self.resolve(ty);
        }
        Ok((bits / 8, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob by hand: the layout rules the parser must follow.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        /// String offsets of a split blob start after the base's strings.
        str_base: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self { types: vec![], strings: vec![0], str_base: 0 }
        }
        /// A split blob over a base whose string section is `base_str_len`
        /// bytes (its own section need not start with a NUL).
        fn split(base_str_len: usize) -> Self {
            Self { types: vec![], strings: vec![], str_base: base_str_len as u32 }
        }
        fn s(&mut self, s: &str) -> u32 {
            let off = self.str_base + self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn raw(&mut self, name: u32, kind: u32, vlen: u32, flag: bool, size: u32) {
            let info = (kind << 24) | vlen | if flag { 1 << 31 } else { 0 };
            for v in [name, info, size] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
        }
        fn int(&mut self, name: &str) {
            let n = self.s(name);
            self.raw(n, KIND_INT, 0, false, 4);
            self.types.extend_from_slice(&32u32.to_le_bytes());
        }
        fn composite(&mut self, kind: u32, name: &str, flag: bool, members: &[(&str, u32, u32)]) {
            let n = if name.is_empty() { 0 } else { self.s(name) };
            self.raw(n, kind, members.len() as u32, flag, 64);
            for &(m, ty, off) in members {
                let mn = if m.is_empty() { 0 } else { self.s(m) };
                for v in [mn, ty, off] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        fn build(self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(&0xeb9fu16.to_le_bytes());
            b.extend_from_slice(&[1, 0]);
            for v in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&self.types);
            b.extend_from_slice(&self.strings);
            b
        }
    }

    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        b.int("int"); // 1
        b.composite(KIND_STRUCT, "ns_common", false, &[("stashed", 1, 0), ("inum", 1, 96)]); // 2
        b.composite(KIND_UNION, "", false, &[("a", 1, 0), ("b", 1, 0)]); // 3: anonymous union
        b.composite(KIND_STRUCT, "net", false, &[("count", 1, 0), ("", 3, 64), ("ns", 4, 128)]); // 4 .. typedef follows
        // 5: typedef ns_common_t -> 2 (so `ns` at id 4 points to... fixed below)
        let n = b.s("ns_common_t");
        b.raw(n, KIND_TYPEDEF, 0, false, 2);
        // bitfield struct with kind_flag: member `flags` 3 bits at bit 4, `sk_err` at 32 bits.
        b.composite(KIND_STRUCT, "sock", true, &[("flags", 1, (3 << 24) | 4), ("sk_err", 1, 352)]); // 6
        b.build()
    }

    #[test]
    fn offsets_through_anonymous_members_and_typedefs() {
        let mut blob = sample();
        // `net.ns` must point at the typedef (id 5); it was written as 4: patch it.
        let btf = Btf::parse(&blob).expect("parse");
        assert_eq!(btf.member_offset("net", &["a"]), Ok(8));
        assert_eq!(btf.member_offset("sock", &["sk_err"]), Ok(44));
        assert_eq!(btf.member_offset("sock", &["flags"]), Err(BtfError::Unaligned("flags".into())));
        assert_eq!(btf.member_offset("nope", &["x"]), Err(BtfError::NoStruct("nope".into())));
        assert_eq!(btf.member_offset("net", &["zz"]), Err(BtfError::NoMember("zz".into())));
        // Point net.ns at the typedef and walk into ns_common.inum.
        let needle: Vec<u8> = [4u32, 128].iter().flat_map(|v| v.to_le_bytes()).collect();
        let pos = blob.windows(8).position(|w| w == needle.as_slice()).expect("member");
        blob[pos..pos + 4].copy_from_slice(&5u32.to_le_bytes());
        let btf = Btf::parse(&blob).expect("parse");
        assert_eq!(btf.member_offset("net", &["ns", "inum"]), Ok(16 + 12));
    }

    #[test]
    fn truncated_and_bad_blobs_are_errors() {
        let blob = sample();
        assert!(matches!(Btf::parse(&blob[..blob.len() - 40]), Err(BtfError::Truncated(_))));
        assert!(matches!(Btf::parse(&[0u8; 24]), Err(BtfError::BadMagic(0))));
        assert!(matches!(Btf::parse(&[]), Err(BtfError::Truncated(0))));
    }

    #[test]
    fn split_btf_continues_ids_and_strings_of_its_base() {
        let mut base = Builder::new();
        base.int("int"); // 1
        base.composite(KIND_STRUCT, "sk_buff", false, &[("next", 1, 0), ("_nfct", 1, 128)]); // 2
        let base_strings = base.strings.len();
        let strings_at = 24 + base.types.len();
        let base_blob = base.build();
        let vmlinux = Btf::parse(&base_blob).expect("base");
        assert_eq!(
            vmlinux.member_offset("nf_conn", &["tuplehash"]),
            Err(BtfError::NoStruct("nf_conn".into()))
        );

        let mut m = Builder::split(base_strings);
        // 3: the element struct; its members use the base's `int` (id 1).
        m.composite(
            KIND_STRUCT,
            "nf_conntrack_tuple_hash",
            false,
            &[("hnnode", 1, 0), ("tuple", 1, 128)],
        );
        // 4: array of two id-3 elements (index type int).
        m.raw(0, KIND_ARRAY, 0, false, 0);
        for v in [3u32, 1, 2] {
            m.types.extend_from_slice(&v.to_le_bytes());
        }
        // 5: a member named with a *base* string offset ("_nfct" lives in vmlinux's section).
        let nfct =
            base_blob.windows(6).position(|w| w == b"_nfct\0").expect("base string") - strings_at;
        m.composite(
            KIND_STRUCT,
            "nf_conn",
            false,
            &[("ct_general", 1, 0), ("tuplehash", 4, 64), ("", 2, 1024)],
        );
        let module = m.build();
        let btf = Btf::parse_split(&module, &vmlinux).expect("split");
        assert_eq!(btf.member_offset("nf_conn", &["tuplehash"]), Ok(8));
        assert_eq!(btf.array_elem_size("nf_conn", &["tuplehash"]), Ok(64));
        assert_eq!(btf.member_offset("nf_conntrack_tuple_hash", &["tuple"]), Ok(16));
        // Through an anonymous member of a base type, by a base string.
        assert_eq!(btf.str_at(nfct as u32), "_nfct");
        assert_eq!(btf.member_offset("nf_conn", &["_nfct"]), Ok(128 + 16));
        assert_eq!(btf.member_offset("sk_buff", &["_nfct"]), Ok(16), "base types still resolve");
        assert_eq!(
            btf.array_elem_size("nf_conn", &["ct_general"]),
            Err(BtfError::NotArray("ct_general".into()))
        );
        // Parsed alone, the module's type ids dangle.
        assert!(matches!(Btf::parse(&module), Err(BtfError::Dangling(..))));
    }

    /// Every module BTF of the running kernel parses over its vmlinux BTF
    /// and its named structs resolve their members by name.
    #[test]
    fn running_kernel_module_btf_splits_over_vmlinux() {
        let Ok(vmlinux) = Btf::from_sys_fs() else {
            eprintln!("no /sys/kernel/btf/vmlinux on this host; covered by the synthetic tests");
            return;
        };
        let mut modules = 0;
        for entry in fs::read_dir("/sys/kernel/btf").into_iter().flatten().flatten() {
            if entry.file_name() == "vmlinux" {
                continue;
            }
            let btf =
                vmlinux.with_module_file(&entry.path()).expect("module BTF parses as split BTF");
            assert!(btf.types.len() > vmlinux.types.len(), "{:?} adds types", entry.file_name());
            modules += 1;
        }
        eprintln!("{modules} module BTF blobs checked");
    }

    /// The running kernel's own BTF, where present (it is on the CI machine).
    #[test]
    fn running_kernel_btf_resolves_what_the_programs_read() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("no /sys/kernel/btf/vmlinux on this host; covered by the synthetic tests");
            return;
        }
        let btf = Btf::from_file(path).expect("parse vmlinux BTF");
        let (k, problems) = super::super::kernel_offsets(&btf);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(k.sock_sk_err > 0 && k.sock_sk_err < 4096, "{k:?}");
        assert!(k.net_ns_inum < 4096, "{k:?}");
    }
}
