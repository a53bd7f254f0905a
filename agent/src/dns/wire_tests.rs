//! Decoder cases: well-formed messages, each kind of malformation, and random
//! bytes (never a panic, never a hang).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::wire::*;

/// Wire form of a dotted name (no compression).
fn name(n: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in n.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

fn question(owner: &[u8], qtype: u16) -> Vec<u8> {
    let mut q = owner.to_vec();
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

fn rr(owner: &[u8], rtype: u16, class: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut r = owner.to_vec();
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&class.to_be_bytes());
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

/// A pointer to `offset`.
fn ptr(offset: u16) -> Vec<u8> {
    (0xc000 | offset).to_be_bytes().to_vec()
}

/// Response to "WWW.Example.com A" with a CNAME, an A, an AAAA (compressed
/// owners), an NS in authority and an OPT with the DO bit and extended rcode 1.
fn answer() -> Vec<u8> {
    let mut m = header(0xbeef, 0x8180, [1, 3, 1, 1]);
    m.extend(question(&name("WWW.Example.com"), TYPE_A)); // name at 12
    m.extend(rr(&ptr(12), TYPE_CNAME, 1, 300, &[&[4][..], b"edge", &ptr(16)].concat())); // edge.example.com
    let edge = 12 + 21 + 12; // owner ptr (2) + fixed 10 -> rdata starts at 45
    m.extend(rr(&ptr(edge), TYPE_A, 1, 60, &[192, 0, 2, 7]));
    m.extend(rr(&ptr(edge), TYPE_AAAA, 1, 61, &Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7).octets()));
    m.extend(rr(&ptr(16), 2, 1, 3600, &name("ns1.example.com")));
    m.extend(rr(&[0], TYPE_OPT, 1232, 0x0100_8000, &[]));
    m
}

#[test]
fn decodes_a_query() {
    let mut m = header(7, 0x0100, [1, 0, 0, 0]);
    m.extend(question(&name("API.Example.COM"), TYPE_AAAA));
    let q = parse(&m, Completeness::Whole).unwrap();
    assert_eq!(q.header.id, 7);
    assert!(!q.header.is_response());
    assert_eq!(q.questions, vec![Question { name: "api.example.com".into(), qtype: TYPE_AAAA, qclass: 1 }]);
    assert!(q.answers.is_empty() && q.edns.is_none() && !q.partial);
}

#[test]
fn decodes_answers_through_compression_and_edns() {
    let m = parse(&answer(), Completeness::Whole).unwrap();
    assert!(m.header.is_response());
    assert_eq!(m.questions[0].name, "www.example.com");
    let got: Vec<(String, u32, Rdata)> = m.answers.iter().map(|r| (r.name.clone(), r.ttl, r.data.clone())).collect();
    assert_eq!(
        got,
        vec![
            ("www.example.com".into(), 300, Rdata::Cname("edge.example.com".into())),
            ("edge.example.com".into(), 60, Rdata::A(Ipv4Addr::new(192, 0, 2, 7))),
            ("edge.example.com".into(), 61, Rdata::Aaaa(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7))),
        ]
    );
    assert_eq!(m.edns, Some(Edns { udp_size: 1232, version: 0, dnssec_ok: true, ext_rcode: 1 }));
    assert_eq!(m.rcode(), 16, "extended rcode 1 << 4 | header rcode 0");
}

#[test]
fn rcode_comes_from_the_header_without_edns() {
    let mut m = header(1, 0x8183, [1, 0, 0, 0]);
    m.extend(question(&name("nope.example"), TYPE_A));
    assert_eq!(parse(&m, Completeness::Whole).unwrap().rcode(), RCODE_NXDOMAIN);
}

#[test]
fn compression_loops_and_forward_pointers_are_refused() {
    // a name that is a pointer to itself
    let mut m = header(1, 0x0100, [1, 0, 0, 0]);
    m.extend(ptr(12));
    m.extend([0, 1, 0, 1]);
    assert_eq!(parse(&m, Completeness::Whole), Err(WireError::BadPointer { at: 12, target: 12 }));
    // a forward pointer
    let mut m = header(1, 0x0100, [1, 0, 0, 0]);
    m.extend(ptr(20));
    m.extend([0, 1, 0, 1, 1, b'a', 0]);
    assert!(matches!(parse(&m, Completeness::Whole), Err(WireError::BadPointer { target: 20, .. })));
    // two labels pointing at each other: a -> b -> a
    let mut m = header(1, 0x8180, [1, 1, 0, 0]);
    m.extend([1, b'a']);
    m.extend(ptr(18)); // 12: "a" then pointer to 18
    m.extend([0, 1, 0, 1]); // qtype/qclass at 16 (the name ends at the pointer)
    m.extend([1, b'b']);
    m.extend(ptr(12)); // 18: "b" then pointer back to 12
    let err = parse(&m, Completeness::Whole).unwrap_err();
    assert!(matches!(err, WireError::BadPointer { .. }), "{err}");
}

/// A response to "a" whose answer owners form one pointer chain: each points
/// to the previous owner, the first to the question, so the last owner takes
/// `answers` pointer hops.
fn pointer_chain(answers: u16) -> Vec<u8> {
    let mut m = header(1, 0x8180, [1, answers, 0, 0]);
    m.extend(question(&name("a"), TYPE_A)); // name at 12, records from 19
    let mut prev = 12;
    for i in 0..answers {
        let at = m.len() as u16;
        m.extend(rr(&ptr(prev), TYPE_A, 1, 5, &[10, 0, 0, i as u8]));
        prev = at;
    }
    m
}

#[test]
fn pointer_chains_are_followed_up_to_127_hops() {
    let m = parse(&pointer_chain(127), Completeness::Whole).unwrap();
    assert_eq!(usize::from(m.answers_dropped) + m.answers.len(), 127);
    assert!(m.answers.iter().all(|r| r.name == "a"));
    // one more hop: refused, though each pointer points backwards
    let err = parse(&pointer_chain(128), Completeness::Whole).unwrap_err();
    assert_eq!(err, WireError::BadPointer { at: 19, target: 12 });
    assert!(parse(&pointer_chain(128), Completeness::Cut).is_err(), "not a cut copy's missing bytes");
}

#[test]
fn a_pointer_must_lead_to_labels_that_end_before_it() {
    // "a.example" at 12..23, qtype 23..25 (00 01), qclass 25..27 (00 01)
    let mut m = header(1, 0x8180, [1, 1, 0, 0]);
    m.extend(question(&name("a.example"), TYPE_A));
    // an answer owner at 27 pointing to itself
    m.extend(ptr(27));
    m.extend([0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
    assert!(matches!(parse(&m, Completeness::Whole), Err(WireError::BadPointer { at: 27, target: 27 })));
    // pointing to 24 reads the qtype/qclass bytes as labels (01 00, 01 c0)
    // and runs into the pointer itself at 27
    let n = m.len();
    m[n - 16] = 0xc0;
    m[n - 15] = 24;
    let err = parse(&m, Completeness::Whole).unwrap_err();
    assert_eq!(err, WireError::Overlap { at: 28, bound: 27 });
}

#[test]
fn labels_over_63_bytes_and_names_over_255_are_refused() {
    let mut m = header(1, 0x0100, [1, 0, 0, 0]);
    m.push(64);
    m.extend([b'x'; 64]);
    m.extend([0, 0, 1, 0, 1]);
    assert_eq!(parse(&m, Completeness::Whole), Err(WireError::LabelTooLong { len: 64, at: 12 }));
    let long = [&"a".repeat(63)[..]; 5].join(".");
    let mut m = header(1, 0x0100, [1, 0, 0, 0]);
    m.extend(question(&name(&long), TYPE_A));
    assert_eq!(parse(&m, Completeness::Whole), Err(WireError::NameTooLong { at: 12 }));
    // exactly 255 on the wire is fine: 3 x 63 + 61 byte labels
    let max = [&"a".repeat(63)[..], &"b".repeat(63), &"c".repeat(63), &"d".repeat(61)].join(".");
    let mut m = header(1, 0x0100, [1, 0, 0, 0]);
    m.extend(question(&name(&max), TYPE_A));
    assert_eq!(parse(&m, Completeness::Whole).unwrap().questions[0].name, max);
}

#[test]
fn counts_that_lie_are_errors_unless_the_copy_was_cut() {
    let mut m = answer();
    m.truncate(m.len() - 11); // without the OPT
    m[7] = 9; // ancount 9: the 3 answers and the NS are there, then nothing
    m[9] = 0;
    m[11] = 0;
    let err = parse(&m, Completeness::Whole).unwrap_err();
    assert!(matches!(err, WireError::Truncated { section: Section::Answer, .. }), "{err}");
    let cut = parse(&m, Completeness::Cut).unwrap();
    assert!(cut.partial);
    assert_eq!(cut.answers.len(), 4);
    // a question count that lies is an error either way
    let mut q = header(1, 0x0100, [2, 0, 0, 0]);
    q.extend(question(&name("a.example"), TYPE_A));
    for c in [Completeness::Whole, Completeness::Cut] {
        assert!(matches!(parse(&q, c), Err(WireError::Truncated { section: Section::Question, .. })));
    }
}

#[test]
fn a_cut_copy_keeps_what_arrived_whole() {
    let full = answer();
    let whole = parse(&full, Completeness::Whole).unwrap();
    for len in 12..full.len() {
        match parse(&full[..len], Completeness::Cut) {
            Ok(m) => {
                assert_eq!(m.questions, whole.questions, "cut at {len}");
                assert!(m.answers.len() <= whole.answers.len());
                assert_eq!(m.answers[..], whole.answers[..m.answers.len()], "cut at {len}");
            }
            Err(WireError::Truncated { section: Section::Question, .. }) => assert!(len < 12 + 21),
            Err(e) => panic!("cut at {len}: {e}"),
        }
        assert!(parse(&full[..len], Completeness::Whole).is_err(), "whole parse of {len} bytes");
    }
    assert!(parse(&full[..11], Completeness::Cut).is_err());
}

#[test]
fn record_data_lengths_are_checked() {
    for (rtype, rdata) in [(TYPE_A, &[1u8, 2, 3, 4, 5][..]), (TYPE_AAAA, &[0; 4][..])] {
        let mut m = header(1, 0x8180, [1, 1, 0, 0]);
        m.extend(question(&name("a.example"), rtype));
        m.extend(rr(&ptr(12), rtype, 1, 5, rdata));
        assert!(matches!(parse(&m, Completeness::Whole), Err(WireError::BadRdata { .. })), "type {rtype}");
    }
    // a CNAME whose name runs past its data length
    let mut m = header(1, 0x8180, [1, 1, 0, 0]);
    m.extend(question(&name("a.example"), TYPE_A));
    let mut bad = rr(&ptr(12), TYPE_CNAME, 1, 5, &name("b.example"));
    let n = bad.len();
    bad[n - 12] = 3; // rdlength 3 instead of 11
    m.extend(bad);
    assert!(matches!(parse(&m, Completeness::Whole), Err(WireError::BadCname { .. })));
}

#[test]
fn unknown_types_are_skipped_and_extra_records_counted() {
    let mut m = header(1, 0x8180, [1, 70, 0, 0]);
    m.extend(question(&name("many.example"), TYPE_A));
    m.extend(rr(&ptr(12), 16, 1, 5, b"\x05hello")); // TXT
    for i in 0..69u8 {
        m.extend(rr(&ptr(12), TYPE_A, 1, 5, &[10, 0, 0, i]));
    }
    let p = parse(&m, Completeness::Whole).unwrap();
    assert_eq!(p.answers.len(), MAX_KEPT_RECORDS);
    assert_eq!(p.answers[0].data, Rdata::Other);
    assert_eq!(p.answers_dropped, 6);
}

#[test]
fn a_second_opt_record_is_an_error() {
    let mut m = header(1, 0x8180, [0, 0, 0, 2]);
    m.extend(rr(&[0], TYPE_OPT, 512, 0, &[]));
    m.extend(rr(&[0], TYPE_OPT, 512, 0, &[]));
    assert_eq!(parse(&m, Completeness::Whole), Err(WireError::DuplicateOpt));
}

#[test]
fn an_opt_record_must_be_owned_by_the_root() {
    let mut m = header(1, 0x8180, [0, 0, 0, 1]);
    m.extend(rr(&name("x"), TYPE_OPT, 512, 0, &[]));
    assert_eq!(parse(&m, Completeness::Whole), Err(WireError::OptNotRoot("x".into())));
    let mut m = header(1, 0x8180, [0, 1, 0, 0]);
    m.extend(rr(&[0], TYPE_OPT, 512, 0, &[]));
    assert_eq!(parse(&m, Completeness::Whole), Err(WireError::OptOutsideAdditional(Section::Answer)));
}

#[test]
fn odd_label_bytes_are_escaped() {
    assert_eq!(format_labels([&b"a.b"[..], b"c\\d", b"\x00\x7f "]), "a\\.b.c\\\\d.\\000\\127\\032");
    assert_eq!(format_labels(Vec::<&[u8]>::new()), ".");
    let mut m = header(1, 0x0100, [1, 0, 0, 0]);
    m.extend(question(&[0], 2));
    assert_eq!(parse(&m, Completeness::Whole).unwrap().questions[0].name, ".");
}

#[test]
fn random_bytes_never_panic() {
    // xorshift: deterministic, no dependency
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let base = answer();
    for i in 0..50_000 {
        let mut m =
            if i % 2 == 0 { base.clone() } else { (0..(next() % 600) as usize).map(|_| next() as u8).collect() };
        // flip a few bytes of the valid message
        for _ in 0..(next() % 4) {
            if !m.is_empty() {
                let at = (next() as usize) % m.len();
                m[at] = next() as u8;
            }
        }
        let _ = parse(&m, Completeness::Whole);
        let _ = parse(&m, Completeness::Cut);
    }
}
