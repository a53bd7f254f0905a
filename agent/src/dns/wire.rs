//! DNS message decoding (RFC 1035, EDNS from RFC 6891) from untrusted bytes.
//!
//! Every read is bounds-checked and every loop is bounded by the input: names
//! follow compression pointers only to offsets strictly before the label
//! sequence that holds the pointer, and the labels found there must end before
//! it, so a chain of pointers always moves backwards and ends; and it ends
//! within [`MAX_POINTER_HOPS`]. Depends on std and thiserror only, so the fuzz
//! target (agent/fuzz) can build this file on its own.
//!
//! A message the kernel cut at its copy bound is decoded with
//! [`Completeness::Cut`]: header and questions must be whole, the records are
//! read as far as the bytes go. A whole message must hold everything its
//! counts announce.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;

pub const RCODE_NOERROR: u16 = 0;
pub const RCODE_SERVFAIL: u16 = 2;
pub const RCODE_NXDOMAIN: u16 = 3;

/// Most records kept per message; the rest are read and counted, not kept.
pub const MAX_KEPT_RECORDS: usize = 64;
/// Longest name on the wire (RFC 1035 2.3.4).
const MAX_NAME_WIRE: usize = 255;
/// Compression pointers followed for one name, at most. A name has at most
/// 127 labels, so a chain where every pointer leads to a label never needs
/// more; a longer one is pointers to pointers, and without a cap every name
/// of a message could walk a chain through the whole message (work growing
/// with the square of its size).
pub const MAX_POINTER_HOPS: usize = 127;
const HEADER_LEN: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Header,
    Question,
    Answer,
    Authority,
    Additional,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{section:?} ends at byte {at}, past the message's {len} bytes")]
    Truncated { section: Section, at: usize, len: usize },
    #[error("label of {len} bytes at offset {at} (at most 63)")]
    LabelTooLong { len: u8, at: usize },
    #[error("name at offset {at} is longer than 255 bytes")]
    NameTooLong { at: usize },
    #[error(
        "compression pointer at offset {at} to {target} does not point backwards (a loop or a forward reference) \
         or is past the 127 hops allowed per name"
    )]
    BadPointer { at: usize, target: usize },
    #[error("labels reached through a compression pointer run into offset {bound} at {at} (overlapping names)")]
    Overlap { at: usize, bound: usize },
    #[error("{rtype} record at offset {at} has {len} bytes of data (want {want})")]
    BadRdata { rtype: u16, at: usize, len: usize, want: usize },
    #[error("CNAME data at offset {at} does not hold exactly one name")]
    BadCname { at: usize },
    #[error("more than one OPT record")]
    DuplicateOpt,
    #[error("OPT record owned by {0:?} instead of the root")]
    OptNotRoot(String),
    #[error("OPT record in the {0:?} section (only allowed in Additional)")]
    OptOutsideAdditional(Section),
}

/// Whether the bytes are the whole message or the kernel's cut copy of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completeness {
    Whole,
    Cut,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    /// QR, opcode, AA, TC, RD, RA, Z, AD, CD and the low 4 rcode bits, as on the wire.
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl Header {
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }
    pub fn truncated(&self) -> bool {
        self.flags & 0x0200 != 0
    }
    pub fn rcode_low(&self) -> u16 {
        self.flags & 0xf
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Lower-case presentation form without the final dot ("." for the root).
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rdata {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    /// Any other type: skipped, length checked.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub data: Rdata,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
    /// The upper 8 bits of the 12-bit rcode.
    pub ext_rcode: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub questions: Vec<Question>,
    /// Answer-section records (at most [`MAX_KEPT_RECORDS`]).
    pub answers: Vec<Record>,
    /// Answer records read but not kept.
    pub answers_dropped: u16,
    pub edns: Option<Edns>,
    /// The records stopped early because the copy was cut.
    pub partial: bool,
}

impl Message {
    /// The full rcode: the header's 4 bits extended by EDNS.
    pub fn rcode(&self) -> u16 {
        let ext = self.edns.map_or(0, |e| u16::from(e.ext_rcode));
        (ext << 4) | self.header.rcode_low()
    }
}

/// Formats raw labels in presentation form, lower case, without the final dot.
pub fn format_labels<'a>(labels: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut out = String::new();
    for label in labels {
        if !out.is_empty() {
            out.push('.');
        }
        for &b in label {
            match b.to_ascii_lowercase() {
                b'.' | b'\\' => {
                    out.push('\\');
                    out.push(char::from(b));
                }
                c @ 0x21..=0x7e => out.push(char::from(c)),
                c => {
                    let _ = write!(out, "\\{c:03}");
                }
            }
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, section: Section) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.msg.len());
        let end = end.ok_or(WireError::Truncated { section, at: self.pos + n, len: self.msg.len() })?;
        let s = &self.msg[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self, section: Section) -> Result<u16, WireError> {
        let b = self.take(2, section)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, section: Section) -> Result<u32, WireError> {
        let b = self.take(4, section)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a possibly compressed name starting here; leaves the reader after
    /// its in-place part.
    fn name(&mut self, section: Section) -> Result<String, WireError> {
        let msg = self.msg;
        let mut labels: Vec<&[u8]> = Vec::new();
        let mut wire_len = 1; // the root label
        let mut pos = self.pos;
        // A pointer must point below where the current run of labels began,
        // and the run it leads to must end before that point (no overlap).
        let mut run_start = self.pos;
        let mut bound: Option<usize> = None;
        let mut resume = None;
        let mut hops = 0;
        loop {
            if let Some(b) = bound.filter(|&b| pos >= b) {
                return Err(WireError::Overlap { at: pos, bound: b });
            }
            let truncated = WireError::Truncated { section, at: pos + 1, len: msg.len() };
            let len = *msg.get(pos).ok_or(truncated)?;
            match len & 0xc0 {
                0x00 if len == 0 => {
                    pos += 1;
                    break;
                }
                0x00 => {
                    let n = usize::from(len);
                    let label = msg.get(pos + 1..pos + 1 + n).ok_or(WireError::Truncated {
                        section,
                        at: pos + 1 + n,
                        len: msg.len(),
                    })?;
                    wire_len += n + 1;
                    if wire_len > MAX_NAME_WIRE {
                        return Err(WireError::NameTooLong { at: self.pos });
                    }
                    labels.push(label);
                    pos += 1 + n;
                }
                0xc0 => {
                    let low = *msg.get(pos + 1).ok_or(WireError::Truncated { section, at: pos + 2, len: msg.len() })?;
                    let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                    hops += 1;
                    if target >= run_start || hops > MAX_POINTER_HOPS {
                        return Err(WireError::BadPointer { at: pos, target });
                    }
                    resume.get_or_insert(pos + 2);
                    bound = Some(run_start);
                    run_start = target;
                    pos = target;
                }
                _ => return Err(WireError::LabelTooLong { len, at: pos }),
            }
        }
        self.pos = resume.unwrap_or(pos);
        Ok(format_labels(labels))
    }
}

/// Decodes one DNS message.
pub fn parse(msg: &[u8], completeness: Completeness) -> Result<Message, WireError> {
    let mut r = Reader { msg, pos: 0 };
    if msg.len() < HEADER_LEN {
        return Err(WireError::Truncated { section: Section::Header, at: HEADER_LEN, len: msg.len() });
    }
    let header = Header {
        id: r.u16(Section::Header)?,
        flags: r.u16(Section::Header)?,
        qdcount: r.u16(Section::Header)?,
        ancount: r.u16(Section::Header)?,
        nscount: r.u16(Section::Header)?,
        arcount: r.u16(Section::Header)?,
    };
    let mut m =
        Message { header, questions: Vec::new(), answers: Vec::new(), answers_dropped: 0, edns: None, partial: false };
    for _ in 0..header.qdcount {
        let name = r.name(Section::Question)?;
        let qtype = r.u16(Section::Question)?;
        let qclass = r.u16(Section::Question)?;
        if m.questions.len() < MAX_KEPT_RECORDS {
            m.questions.push(Question { name, qtype, qclass });
        }
    }
    let sections = [
        (Section::Answer, header.ancount),
        (Section::Authority, header.nscount),
        (Section::Additional, header.arcount),
    ];
    for (section, count) in sections {
        for _ in 0..count {
            match record(&mut r, section) {
                Ok(rec) => keep(&mut m, section, rec)?,
                Err(WireError::Truncated { .. }) if completeness == Completeness::Cut => {
                    m.partial = true;
                    return Ok(m);
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(m)
}

fn keep(m: &mut Message, section: Section, rec: Record) -> Result<(), WireError> {
    if rec.rtype == TYPE_OPT && section != Section::Additional {
        return Err(WireError::OptOutsideAdditional(section));
    }
    match section {
        Section::Answer if m.answers.len() < MAX_KEPT_RECORDS => m.answers.push(rec),
        Section::Answer => m.answers_dropped = m.answers_dropped.saturating_add(1),
        Section::Additional if rec.rtype == TYPE_OPT => {
            if m.edns.is_some() {
                return Err(WireError::DuplicateOpt);
            }
            if rec.name != "." {
                return Err(WireError::OptNotRoot(rec.name));
            }
            m.edns = Some(Edns {
                udp_size: rec.class,
                ext_rcode: (rec.ttl >> 24) as u8,
                version: (rec.ttl >> 16) as u8,
                dnssec_ok: rec.ttl & 0x8000 != 0,
            });
        }
        _ => {}
    }
    Ok(())
}

fn record(r: &mut Reader<'_>, section: Section) -> Result<Record, WireError> {
    let name = r.name(section)?;
    let rtype = r.u16(section)?;
    let class = r.u16(section)?;
    let ttl = r.u32(section)?;
    let len = usize::from(r.u16(section)?);
    let at = r.pos;
    let rdata = r.take(len, section)?;
    let fixed = |want: usize| {
        if len == want {
            Ok(())
        } else {
            Err(WireError::BadRdata { rtype, at, len, want })
        }
    };
    let data = match rtype {
        TYPE_A => {
            fixed(4)?;
            Rdata::A(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]))
        }
        TYPE_AAAA => {
            fixed(16)?;
            let mut b = [0u8; 16];
            b.copy_from_slice(rdata);
            Rdata::Aaaa(Ipv6Addr::from(b))
        }
        TYPE_CNAME => {
            // the name may point anywhere before it, so read it in the whole message
            let mut inner = Reader { msg: r.msg, pos: at };
            let target = inner.name(section).map_err(|e| match e {
                WireError::Truncated { .. } => WireError::BadCname { at },
                e => e,
            })?;
            if inner.pos != at + len {
                return Err(WireError::BadCname { at });
            }
            Rdata::Cname(target)
        }
        _ => Rdata::Other,
    };
    Ok(Record { name, rtype, class, ttl, data })
}
