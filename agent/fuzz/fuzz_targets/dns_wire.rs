//! Any bytes through the DNS decoder: no panic, no hang, and a message that
//! decodes whole decodes the same when treated as a cut copy.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/dns/wire.rs"]
#[allow(dead_code)]
mod wire;

fuzz_target!(|data: &[u8]| {
    let whole = wire::parse(data, wire::Completeness::Whole);
    let cut = wire::parse(data, wire::Completeness::Cut);
    if let Ok(m) = &whole {
        assert_eq!(Ok(m), cut.as_ref(), "a whole message reads the same as a cut copy");
        assert!(!m.partial);
        assert!(m.answers.len() <= wire::MAX_KEPT_RECORDS);
    }
    if let Ok(m) = &cut {
        for q in &m.questions {
            assert!(!q.name.is_empty());
        }
    }
});
