//! Differential test of the DNS decoder against hickory-proto on the same
//! bytes: random messages encoded by hickory (with its name compression), and
//! the same messages with bytes flipped or cut. Where both decoders accept a
//! message they must agree on every field podlens reads; where they differ in
//! acceptance, the difference must be one of the documented ones below.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::{
    op::{Edns, Message as HMessage, MessageType, OpCode, Query, ResponseCode},
    rr::{
        rdata::{A, AAAA, CNAME, MX, NS, TXT},
        DNSClass, Name, RData, Record, RecordType,
    },
};
use podlens_agent::dns::wire::{self, Completeness, Rdata};

/// xorshift64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn random_name(rng: &mut Rng, pool: &[Name]) -> Name {
    if !pool.is_empty() && rng.chance(50) {
        // shared suffixes and repeats make hickory compress
        return pool[rng.below(pool.len() as u64) as usize].clone();
    }
    let labels: Vec<Vec<u8>> = (0..1 + rng.below(4))
        .map(|_| {
            let max = if rng.chance(5) { 63 } else { 12 };
            let len = 1 + rng.below(max) as usize;
            (0..len)
                .map(|_| {
                    if rng.chance(3) {
                        rng.next() as u8 // any byte: escaping must agree too
                    } else {
                        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"[rng.below(64) as usize]
                    }
                })
                .collect()
        })
        .collect();
    let mut name = Name::from_labels(labels).expect("labels within limits");
    if rng.chance(60) {
        if let Some(base) = pool.first() {
            if let Ok(longer) = name.clone().append_name(base) {
                name = longer;
            }
        }
    }
    name
}

fn random_record(rng: &mut Rng, pool: &[Name]) -> Record {
    let owner = random_name(rng, pool);
    let ttl = rng.next() as u32 >> rng.below(32);
    let data = match rng.below(6) {
        0 | 1 => RData::A(A(Ipv4Addr::from(rng.next() as u32))),
        2 => RData::AAAA(AAAA(Ipv6Addr::from(u128::from(rng.next()) << 64 | u128::from(rng.next())))),
        3 => RData::CNAME(CNAME(random_name(rng, pool))),
        4 => RData::MX(MX::new(rng.next() as u16, random_name(rng, pool))),
        _ => RData::TXT(TXT::new(vec!["v=podlens".into()])),
    };
    Record::from_rdata(owner, ttl, data)
}

fn random_message(rng: &mut Rng) -> HMessage {
    let kind = if rng.chance(50) { MessageType::Response } else { MessageType::Query };
    let mut m = HMessage::new(rng.next() as u16, kind, OpCode::Query);
    m.metadata.authoritative = rng.chance(30);
    m.metadata.truncation = rng.chance(10);
    m.metadata.recursion_desired = rng.chance(70);
    m.metadata.recursion_available = rng.chance(50);
    m.metadata.authentic_data = rng.chance(10);
    m.metadata.checking_disabled = rng.chance(10);
    m.metadata.response_code = ResponseCode::from(0, rng.below(6) as u8);
    let mut pool: Vec<Name> = vec![Name::from_ascii("svc.cluster.local.").unwrap()];
    for _ in 0..if rng.chance(90) { 1 } else { rng.below(3) } {
        let name = random_name(rng, &pool);
        pool.push(name.clone());
        let qtype = [RecordType::A, RecordType::AAAA, RecordType::MX, RecordType::TXT][rng.below(4) as usize];
        let mut q = Query::query(name, qtype);
        q.set_query_class(if rng.chance(95) { DNSClass::IN } else { DNSClass::CH });
        m.add_query(q);
    }
    for _ in 0..rng.below(6) {
        let r = random_record(rng, &pool);
        if let RData::CNAME(CNAME(target)) = &r.data {
            pool.push(target.clone());
        }
        m.add_answer(r);
    }
    for _ in 0..rng.below(2) {
        m.add_authority(Record::from_rdata(pool[0].clone(), 3600, RData::NS(NS(random_name(rng, &pool)))));
    }
    for _ in 0..rng.below(2) {
        m.add_additional(Record::from_rdata(random_name(rng, &pool), 60, RData::A(A(Ipv4Addr::LOCALHOST))));
    }
    if rng.chance(50) {
        let mut e = Edns::new();
        e.set_max_payload(512 + rng.below(3600) as u16);
        e.set_dnssec_ok(rng.chance(30));
        m.set_edns(e);
    }
    m
}

fn labels(n: &Name) -> String {
    wire::format_labels(n.iter())
}

/// Every field podlens reads, compared.
fn agree(ours: &wire::Message, theirs: &HMessage) -> Result<(), String> {
    let h = &ours.header;
    let md = &theirs.metadata;
    let check =
        |what: &str, a: String, b: String| if a == b { Ok(()) } else { Err(format!("{what}: ours {a}, hickory {b}")) };
    check("id", h.id.to_string(), md.id.to_string())?;
    check("qr", h.is_response().to_string(), (md.message_type == MessageType::Response).to_string())?;
    check("opcode", h.opcode().to_string(), u8::from(md.op_code).to_string())?;
    check("tc", h.truncated().to_string(), md.truncation.to_string())?;
    check("rd", (h.flags & 0x0100 != 0).to_string(), md.recursion_desired.to_string())?;
    check("rcode", ours.rcode().to_string(), u16::from(md.response_code).to_string())?;
    let q: Vec<(String, u16, u16)> = ours.questions.iter().map(|q| (q.name.clone(), q.qtype, q.qclass)).collect();
    let hq: Vec<(String, u16, u16)> = theirs
        .queries
        .iter()
        .map(|q| (labels(q.name()), u16::from(q.query_type()), u16::from(q.query_class())))
        .collect();
    check("questions", format!("{q:?}"), format!("{hq:?}"))?;
    check(
        "answer count",
        (ours.answers.len() + usize::from(ours.answers_dropped)).to_string(),
        theirs.answers.len().to_string(),
    )?;
    for (a, b) in ours.answers.iter().zip(&theirs.answers) {
        let theirs_data = match &b.data {
            RData::A(A(ip)) => Rdata::A(*ip),
            RData::AAAA(AAAA(ip)) => Rdata::Aaaa(*ip),
            RData::CNAME(CNAME(n)) => Rdata::Cname(labels(n)),
            _ => Rdata::Other,
        };
        let ours_r = (a.name.clone(), a.rtype, a.class, a.ttl, a.data.clone());
        let theirs_r = (labels(&b.name), u16::from(b.record_type()), u16::from(b.dns_class), b.ttl, theirs_data);
        check("answer", format!("{ours_r:?}"), format!("{theirs_r:?}"))?;
    }
    // hickory reads an OPT's class as the payload size with a floor of 512
    let e = ours.edns.map(|e| (e.udp_size.max(512), e.version, e.dnssec_ok));
    let he = theirs.edns.as_ref().map(|e| (e.max_payload(), e.version(), e.flags().dnssec_ok));
    check("edns", format!("{e:?}"), format!("{he:?}"))
}

/// Where hickory refuses a message podlens reads, the reason must be one of
/// these. podlens reads the framing of every record (owner name, type, class,
/// TTL, data length) and the data of A, AAAA, CNAME and OPT under the same
/// rules as hickory, so a name, length or framing error hickory finds that
/// podlens does not can only come from the data of a type podlens skips
/// (MX, TXT, SOA, ...), whose contents hickory validates; the rest are
/// section rules that do not change any field podlens reports.
const HICKORY_ONLY: &[&str] = &[
    // inside the data of a skipped type
    "InsufficientBytes",
    "IncorrectRDataLengthRead",
    "PointerNotPriorToLabel",
    "LabelOverlapsWithOther",
    "LabelBytesTooLong",
    "UnrecognizedLabelCode",
    "DomainNameTooLong",
    // section rules
    "InvalidEmptyRecord",
    "RecordNotInAdditionalSection",
    "RecordAfterSig",
    // query-only types (IXFR, AXFR, ANY) used as a record's type
    "UnknownRecordTypeValue",
];

fn variant(e: &impl std::fmt::Debug) -> String {
    let d = format!("{e:?}");
    d.split(|c: char| !c.is_alphanumeric()).next().unwrap_or_default().to_string()
}

#[test]
fn hickory_encoded_messages_decode_identically() {
    let mut rng = Rng(0x5eed_0001);
    for i in 0..20_000 {
        let m = random_message(&mut rng);
        let Ok(bytes) = m.to_vec() else { continue };
        let theirs = HMessage::from_vec(&bytes).unwrap_or_else(|e| panic!("#{i}: hickory rereads its own bytes: {e}"));
        let ours = wire::parse(&bytes, Completeness::Whole).unwrap_or_else(|e| panic!("#{i}: {e} on {bytes:02x?}"));
        if let Err(d) = agree(&ours, &theirs) {
            panic!("#{i}: {d}\nbytes {bytes:02x?}");
        }
    }
}

#[test]
fn mutated_messages_are_judged_alike() {
    let mut rng = Rng(0x5eed_0002);
    let (mut both_ok, mut both_err) = (0u32, 0u32);
    let mut only_hickory: std::collections::BTreeMap<String, u32> = Default::default();
    for i in 0..30_000 {
        let Ok(mut bytes) = random_message(&mut rng).to_vec() else { continue };
        match rng.below(3) {
            0 => bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize),
            _ => {
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] = rng.next() as u8;
                }
            }
        }
        let ours = wire::parse(&bytes, Completeness::Whole);
        let theirs = HMessage::from_vec(&bytes);
        match (&ours, &theirs) {
            (Ok(o), Ok(t)) => {
                both_ok += 1;
                if let Err(d) = agree(o, t) {
                    panic!("#{i}: both accept but differ: {d}\nbytes {bytes:02x?}");
                }
            }
            (Err(_), Err(_)) => both_err += 1,
            (Ok(_), Err(e)) => {
                let v = variant(e);
                assert!(
                    HICKORY_ONLY.contains(&v.as_str()),
                    "#{i}: only hickory refuses ({v}: {e})\nbytes {bytes:02x?}"
                );
                *only_hickory.entry(v).or_default() += 1;
            }
            (Err(e), Ok(t)) => panic!("#{i}: only podlens refuses ({e}); hickory read {t:?}\nbytes {bytes:02x?}"),
        }
    }
    eprintln!("both accept {both_ok}, both refuse {both_err}, only hickory refuses {only_hickory:?}");
    assert!(both_ok > 5_000 && both_err > 5_000, "the mutations exercise both outcomes");
}
