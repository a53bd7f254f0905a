//! A minimal reader of struct layouts from the `.BTF` section of a BPF object:
//! enough to check the Rust mirror against what clang laid out for the kernel.

use object::{Object, ObjectSection};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("not an ELF object: {0}")]
    Elf(#[from] object::Error),
    #[error("object has no .BTF section")]
    NoBtf,
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("unknown BTF kind {0}")]
    UnknownKind(u32),
    #[error("no struct named {0}")]
    NoSuchStruct(String),
}

#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    /// Byte offset; bitfields are not used in shared structs.
    pub offset: usize,
}

#[derive(Debug, Clone)]
pub struct StructLayout {
    pub size: usize,
    pub members: Vec<Member>,
}

impl StructLayout {
    pub fn offset_of(&self, name: &str) -> Option<usize> {
        self.members.iter().find(|m| m.name == name).map(|m| m.offset)
    }
}

pub struct BtfLayout {
    structs: Vec<(String, StructLayout)>,
    enums: Vec<(String, Vec<(String, i64)>)>,
}

const KIND_STRUCT: u32 = 4;
const KIND_ENUM: u32 = 6;

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("type section truncated"))
}

impl BtfLayout {
    pub fn from_elf(elf: &[u8]) -> Result<Self, BtfError> {
        let file = object::File::parse(elf)?;
        let section = file.section_by_name(".BTF").ok_or(BtfError::NoBtf)?;
        Self::parse(section.data()?)
    }

    pub fn parse(btf: &[u8]) -> Result<Self, BtfError> {
        if btf.len() < 24 || btf[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(btf, 4)? as usize;
        let type_off = u32_at(btf, 8)? as usize;
        let type_len = u32_at(btf, 12)? as usize;
        let str_off = u32_at(btf, 16)? as usize;
        let str_len = u32_at(btf, 20)? as usize;
        let types = btf
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = btf
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?;
        let name = |off: u32| -> String {
            let rest = strings.get(off as usize..).unwrap_or_default();
            let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        };

        let mut structs = Vec::new();
        let mut enums = Vec::new();
        let mut pos = 0;
        while pos < types.len() {
            let name_off = u32_at(types, pos)?;
            let info = u32_at(types, pos + 4)?;
            let size = u32_at(types, pos + 8)? as usize;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            pos += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, modifiers, FUNC, FLOAT, TYPE_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                other => return Err(BtfError::UnknownKind(other)),
            };
            if kind == KIND_STRUCT {
                let mut members = Vec::with_capacity(vlen);
                for i in 0..vlen {
                    let m = pos + 12 * i;
                    let raw = u32_at(types, m + 8)?;
                    let bits = if kind_flag { raw & 0x00ff_ffff } else { raw };
                    members.push(Member { name: name(u32_at(types, m)?), offset: bits as usize / 8 });
                }
                structs.push((name(name_off), StructLayout { size, members }));
            }
            if kind == KIND_ENUM {
                let mut values = Vec::with_capacity(vlen);
                for i in 0..vlen {
                    let m = pos + 8 * i;
                    values.push((name(u32_at(types, m)?), i64::from(u32_at(types, m + 4)? as i32)));
                }
                enums.push((name(name_off), values));
            }
            pos += extra;
        }
        Ok(Self { structs, enums })
    }

    /// Enumerators of `enum name`, as (name, value).
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        self.enums
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| BtfError::NoSuchStruct(name.to_string()))
    }

    pub fn struct_layout(&self, name: &str) -> Result<StructLayout, BtfError> {
        self.structs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| l.clone())
            .ok_or_else(|| BtfError::NoSuchStruct(name.to_string()))
    }
}
