//! Where the fields portmon's programs read lie in the running kernel's
//! structures, from its BTF (`/sys/kernel/btf/vmlinux`). Only what the
//! programs need: member offsets of named structs, looked up through
//! anonymous unions and structs.

use std::{collections::HashMap, path::Path};

use portmon_common::{sock_common, KernelLayout};

/// The kernel's own type information.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// How deep anonymous structs and unions may nest, and how many members a
/// lookup may visit, before it gives up: a malformed blob can nest a type
/// in itself, or many times over in a few types; real kernels nest
/// anonymous members a few levels deep, in structs of a few hundred.
const MAX_ANONYMOUS_NESTING: usize = 16;
const MAX_MEMBERS_VISITED: usize = 1 << 16;
const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read the kernel's BTF at {path}: portmon needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel's BTF is malformed ({what})")]
    Malformed { what: &'static str },
    #[error("the kernel's BTF has no member {member} in struct {structure}")]
    MissingMember {
        structure: &'static str,
        member: &'static str,
    },
    #[error("struct sock_common.{member} is at byte {found} in this kernel, not {expected}: portmon does not know this layout")]
    UnexpectedOffset {
        member: &'static str,
        found: u32,
        expected: u32,
    },
}

/// One type: its kind, name, the size or type it refers to, and members.
#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: u32,
    size_or_type: u32,
    /// (name, type, bit offset) of a struct's or union's members.
    members: Vec<(u32, u32, u32)>,
}

/// The parsed type section, enough to find member offsets.
#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed { what: "truncated" })
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn vmlinux() -> Result<Self, BtfError> {
        Self::read(Path::new(VMLINUX))
    }

    /// Reads a BTF file.
    pub fn read(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.get(0..2) != Some(&MAGIC.to_le_bytes()[..]) {
            return Err(BtfError::Malformed { what: "bad magic" });
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::Malformed {
                    what: "section out of bounds",
                })
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();

        // Type ids start at 1; id 0 is void.
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < type_data.len() {
            let name = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31 == 1);
            let mut members = Vec::new();
            at += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for m in 0..vlen {
                        let base = at + m * 12;
                        let offset = u32_at(type_data, base + 8)?;
                        // With kind_flag, the top byte is a bitfield's size.
                        let bits = if kind_flag { offset & 0x00ff_ffff } else { offset };
                        members.push((u32_at(type_data, base)?, u32_at(type_data, base + 4)?, bits));
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                k if k <= KIND_TYPE_TAG => 0,
                _ => {
                    return Err(BtfError::Malformed {
                        what: "unknown type kind",
                    })
                }
            };
            types.push(Type {
                kind,
                name,
                size_or_type,
                members,
            });
        }
        let mut btf = Self {
            types,
            strings,
            structs: HashMap::new(),
        };
        let structs = btf
            .types
            .iter()
            .enumerate()
            .filter(|(_, t)| t.kind == KIND_STRUCT && t.name != 0)
            .filter_map(|(id, t)| Some((btf.name(t.name)?.to_owned(), id as u32)))
            .collect();
        btf.structs = structs;
        Ok(btf)
    }

    fn name(&self, offset: u32) -> Option<&str> {
        let rest = self.strings.get(offset as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Byte offset of `member` in `struct structure`, through anonymous
    /// unions and structs.
    pub fn member_offset(&self, structure: &'static str, member: &'static str) -> Result<u32, BtfError> {
        self.member(structure, member).map(|(bits, _)| bits / 8)
    }

    /// Byte offset of the member at the end of `path`, each before it a
    /// struct member of the one before (`net`, `ipv4.tcp_death_row`).
    pub fn path_offset(&self, structure: &'static str, path: &[&'static str]) -> Result<u32, BtfError> {
        let mut offset = 0u32;
        let mut within = structure;
        let mut ty = self.struct_type(structure, path.first().copied().unwrap_or(""))?;
        for (i, &member) in path.iter().enumerate() {
            let missing = BtfError::MissingMember {
                structure: within,
                member,
            };
            let mut budget = MAX_MEMBERS_VISITED;
            let (bits, type_id) = self.find_in(ty, member, 0, &mut budget).ok_or(missing)?;
            offset = offset.checked_add(bits / 8).ok_or(BtfError::Malformed {
                what: "member offset overflows",
            })?;
            if i + 1 < path.len() {
                within = member;
                ty = self
                    .resolve(type_id)
                    .filter(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
                    .ok_or(BtfError::MissingMember {
                        structure: member,
                        member: path[i + 1],
                    })?;
            }
        }
        Ok(offset)
    }

    fn struct_type(&self, structure: &'static str, member: &'static str) -> Result<&Type, BtfError> {
        self.structs
            .get(structure)
            .and_then(|&id| self.types.get(id as usize))
            .ok_or(BtfError::MissingMember { structure, member })
    }

    /// Bit offset and type of `member` in `struct structure`.
    fn member(&self, structure: &'static str, member: &'static str) -> Result<(u32, u32), BtfError> {
        let ty = self.struct_type(structure, member)?;
        let mut budget = MAX_MEMBERS_VISITED;
        self.find_in(ty, member, 0, &mut budget)
            .ok_or(BtfError::MissingMember { structure, member })
    }

    /// Bit offset and type of `member`, through anonymous members.
    fn find_in(&self, ty: &Type, member: &str, depth: usize, budget: &mut usize) -> Option<(u32, u32)> {
        if depth > MAX_ANONYMOUS_NESTING {
            return None;
        }
        for &(name, type_id, bits) in &ty.members {
            *budget = budget.checked_sub(1)?;
            if name != 0 {
                if self.name(name) == Some(member) {
                    return Some((bits, type_id));
                }
                continue;
            }
            let inner = self.resolve(type_id)?;
            if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                if let Some((found, found_type)) = self.find_in(inner, member, depth + 1, budget) {
                    return Some((bits.checked_add(found)?, found_type));
                }
            }
        }
        None
    }

    /// The offsets portmon's programs need, checking the ones they take as
    /// constants.
    pub fn kernel_layout(&self) -> Result<KernelLayout, BtfError> {
        for (member, expected) in [
            ("skc_daddr", sock_common::SKC_DADDR),
            ("skc_hash", sock_common::SKC_HASH),
            ("skc_dport", sock_common::SKC_DPORT),
            ("skc_num", sock_common::SKC_NUM),
            ("skc_family", sock_common::SKC_FAMILY),
        ] {
            let found = self.member_offset("sock_common", member)?;
            if found != expected {
                return Err(BtfError::UnexpectedOffset {
                    member,
                    found,
                    expected,
                });
            }
        }
        Ok(KernelLayout {
            skc_cookie: self.member_offset("sock_common", "skc_cookie")?,
            skc_net: self.member_offset("sock_common", "skc_net")?,
            // 0, never a real offset of it, tells the programs it is absent
            // (a kernel without IPv6).
            skc_v6_daddr: self.member_offset("sock_common", "skc_v6_daddr").unwrap_or(0),
            net_cookie: self.member_offset("net", "net_cookie")?,
            sk_protocol: self.member_offset("sock", "sk_protocol")?,
            net_user_ns: self.member_offset("net", "user_ns")?,
            user_ns_level: self.member_offset("user_namespace", "level")?,
            user_ns_parent: self.member_offset("user_namespace", "parent")?,
            user_ns_owner: self.member_offset("user_namespace", "owner")?,
            task_cred: self.member_offset("task_struct", "cred")?,
            cred_user_ns: self.member_offset("cred", "user_ns")?,
            cred_uid: self.member_offset("cred", "uid")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `struct outer { int a; union { int b; struct { int c; int d; }; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0".to_vec();
        let s = |name: &str| match name {
            "int" => 1,
            "outer" => 5,
            "a" => 11,
            "b" => 13,
            "c" => 15,
            _ => 17,
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            words
                .iter()
                .for_each(|w| types.extend_from_slice(&w.to_le_bytes()))
        };
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: anonymous struct { c; d; }
        push(&[0, (KIND_STRUCT << 24) | 2, 8, s("c"), 1, 0, s("d"), 1, 32]);
        // 3: anonymous union { b; struct 2; }
        push(&[0, (KIND_UNION << 24) | 2, 8, s("b"), 1, 0, 0, 2, 0]);
        // 4: struct outer { a; union 3 at byte 8; }
        push(&[s("outer"), (KIND_STRUCT << 24) | 2, 16, s("a"), 1, 0, 0, 3, 64]);
        blob(&types, &strings)
    }

    /// A BTF blob of these types and strings, behind a version-1 header.
    fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut blob = Vec::new();
        for w in [
            u32::from(MAGIC) | (1 << 16),
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(types);
        blob.extend_from_slice(strings);
        blob
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_structs() {
        let btf = Btf::parse(&sample()).expect("parse");
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "d").unwrap(), 12);
        assert!(matches!(
            btf.member_offset("outer", "e"),
            Err(BtfError::MissingMember { member: "e", .. })
        ));
        assert!(btf.member_offset("inner", "a").is_err());
    }

    #[test]
    fn a_type_nested_in_itself_ends_the_lookup() {
        let mut blob = sample();
        // Type 3, the anonymous union, now holds itself where struct 2 was:
        // its second member's type id sits 4 words into its members.
        let union_at = 24 + 16 + (3 + 6) * 4;
        let second_type = union_at + 12 + 12 + 4;
        assert_eq!(blob[second_type..second_type + 4], 2u32.to_le_bytes());
        blob[second_type..second_type + 4].copy_from_slice(&3u32.to_le_bytes());
        let btf = Btf::parse(&blob).expect("parse");
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert!(btf.member_offset("outer", "d").is_err());
    }

    /// Found by the fuzz target (a lookup that ran for seconds): a struct
    /// of many anonymous members, each of the struct itself, is walked
    /// members^depth times unless the lookup counts what it visits.
    #[test]
    fn a_type_nested_many_times_in_itself_ends_the_lookup() {
        let strings = b"\0outer\0d\0";
        let members = 1000u32;
        let mut types = Vec::new();
        for w in [1, (KIND_STRUCT << 24) | members, 8] {
            types.extend_from_slice(&w.to_le_bytes());
        }
        for _ in 0..members {
            for w in [0u32, 1, 0] {
                types.extend_from_slice(&w.to_le_bytes());
            }
        }
        let btf = Btf::parse(&blob(&types, strings)).expect("parse");
        assert!(btf.member_offset("outer", "d").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 99, 0, 0, 0]).is_err());
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }

    #[test]
    fn reads_this_kernel() {
        let Ok(btf) = Btf::vmlinux() else {
            eprintln!("skipped: this kernel has no BTF at {VMLINUX} (the daemon refuses to start there)");
            return;
        };
        let layout = btf
            .kernel_layout()
            .expect("sock_common and net as portmon expects");
        assert!(layout.skc_cookie > sock_common::SKC_FAMILY);
        assert!(layout.skc_net > sock_common::SKC_FAMILY);
        assert!(layout.net_cookie > 0);
        assert!(layout.sk_protocol > layout.skc_cookie);
        assert!(layout.net_user_ns > 0);
        assert!(layout.user_ns_level > 0);
        assert!(layout.user_ns_parent > 0 && layout.user_ns_owner > layout.user_ns_level);
        assert!(layout.task_cred > 0 && layout.cred_user_ns > layout.cred_uid);
    }
}
