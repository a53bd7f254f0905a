//! Test certificates: a CA, a server certificate for localhost, client
//! certificates for agents and consumers, and the bad ones (expired, signed
//! by another CA). Written as PEM files into a directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("self-signed CA").pem();
        Self { params, key, pem }
    }

    /// A leaf certificate for `names` (DNS names or IPs): (cert PEM, key PEM).
    pub fn leaf(&self, names: &[&str], client: bool, expired: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("signed leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// Paths of one identity.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn write_identity(dir: &Path, name: &str, (cert, key): (String, String)) -> Identity {
    let id = Identity { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
    std::fs::write(&id.cert, cert).expect("write cert");
    std::fs::write(&id.key, key).expect("write key");
    id
}

/// Everything the stream tests need, on disk.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub ca_signer: Ca,
    pub server: Identity,
    pub agent: Identity,
    pub consumer: Identity,
    pub expired_agent: Identity,
    pub rogue_agent: Identity,
    pub rogue_ca: PathBuf,
    pub token_file: PathBuf,
    pub token: String,
}

impl Pki {
    pub fn create(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("pki dir");
        let ca = Ca::new("podlens test CA");
        let rogue = Ca::new("rogue CA");
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, &ca.pem).expect("write CA");
        let rogue_ca = dir.join("rogue-ca.crt");
        std::fs::write(&rogue_ca, &rogue.pem).expect("write rogue CA");
        let token = "s3cret-consumer-token".to_string();
        let token_file = dir.join("tokens");
        std::fs::write(&token_file, format!("# consumers\n{token}\n")).expect("write tokens");
        Self {
            server: write_identity(dir, "server", ca.leaf(&["localhost", "127.0.0.1"], false, false)),
            agent: write_identity(dir, "agent", ca.leaf(&["node-1"], true, false)),
            consumer: write_identity(dir, "consumer", ca.leaf(&["consumer"], true, false)),
            expired_agent: write_identity(dir, "expired-agent", ca.leaf(&["node-1"], true, true)),
            rogue_agent: write_identity(dir, "rogue-agent", rogue.leaf(&["node-1"], true, false)),
            dir: dir.to_path_buf(),
            ca: ca_path,
            ca_signer: ca,
            rogue_ca,
            token_file,
            token,
        }
    }
}
