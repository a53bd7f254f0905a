//! Wire compatibility across versions: a reader skips what it does not know
//! and reads absent fields as zero.

use podlens_proto::v1 as pb;
use prost::Message;

/// Appends a length-delimited field with an unknown number.
fn with_unknown_field(mut bytes: Vec<u8>, field: u32, payload: &[u8]) -> Vec<u8> {
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut bytes);
    prost::encoding::encode_varint(payload.len() as u64, &mut bytes);
    bytes.extend_from_slice(payload);
    bytes
}

#[test]
fn an_older_reader_skips_new_fields_and_new_record_kinds() {
    let flow = pb::FlowRecord { local_ip: "10.0.0.1".into(), protocol: 6, ..Default::default() };
    let record = pb::Record {
        node: "n1".into(),
        window_end_unix_nano: 42,
        kind: Some(pb::record::Kind::Flow(flow.clone())),
        ..Default::default()
    };
    // a newer flow record with a field this version does not have
    let newer_flow = with_unknown_field(flow.encode_to_vec(), 99, b"future");
    assert_eq!(pb::FlowRecord::decode(newer_flow.as_slice()).unwrap(), flow);
    // a newer record whose kind is a oneof member this version does not know
    let newer_kind = pb::Record { kind: None, ..record.clone() }.encode_to_vec();
    let newer_kind = with_unknown_field(newer_kind, 50, b"\x08\x01");
    let decoded = pb::Record::decode(newer_kind.as_slice()).unwrap();
    assert_eq!((decoded.node.as_str(), decoded.window_end_unix_nano, decoded.kind), ("n1", 42, None));
    // and a batch carrying it is still a valid batch
    let batch = pb::Batch { sequence: 7, records: vec![record], ..Default::default() };
    let newer_batch = with_unknown_field(batch.encode_to_vec(), 40, b"x");
    assert_eq!(pb::Batch::decode(newer_batch.as_slice()).unwrap().sequence, 7);
}

#[test]
fn a_newer_reader_reads_absent_fields_as_zero() {
    // an ObserveRequest from a client that predates `since_unix_nano`
    let mut old = Vec::new();
    prost::encoding::string::encode(2, &"shop".to_string(), &mut old);
    let req = pb::ObserveRequest::decode(old.as_slice()).unwrap();
    assert_eq!(req.namespaces, ["shop"]);
    assert_eq!(req.since_unix_nano, 0, "0 means live records only, the old behaviour");
    // an ObserveResponse from a server that predates `origin`
    let resp = pb::ObserveResponse { record: Some(pb::Record::default()), origin: None }.encode_to_vec();
    assert!(pb::ObserveResponse::decode(resp.as_slice()).unwrap().origin.is_none());
}
