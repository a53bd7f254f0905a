//! The committed generated code must match what the schema produces now.

#[path = "../../xtask/src/protogen.rs"]
mod protogen;

use std::path::Path;

#[test]
fn generated_code_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    protogen::generate(root, tmp.path()).unwrap();
    for name in ["podlens.v1.rs", protogen::DESCRIPTOR_FILE] {
        let fresh = std::fs::read(tmp.path().join(name)).unwrap();
        let committed = std::fs::read(root.join("src/gen").join(name))
            .unwrap_or_else(|e| panic!("src/gen/{name}: {e}; run `cargo xtask proto`"));
        assert!(fresh == committed, "src/gen/{name} is stale: run `cargo xtask proto`");
    }
}
