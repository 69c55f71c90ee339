//! `sluice-bench certs`: a throw-away PKI for TLS tests and benchmarks, generated in place
//! with rcgen (no openssl needed): a CA and one server certificate it signed, as PEM files.
//!
//! - `ca.pem`: the CA certificate (CN `sluice-bench test CA`, `basicConstraints CA:TRUE`,
//!   keyCertSign). Its key is never written, so nothing else can be issued under it.
//! - `gw.pem`: the server certificate (the leaf alone), subjectAltName the `--name` (a DNS
//!   name or an IP address) and 127.0.0.1, extendedKeyUsage serverAuth (RFC 5280 §4.2.1.12).
//! - `gw.key`: its private key, PKCS#8 PEM, unencrypted, mode 0600.
//!
//! Keys are ECDSA P-256 with SHA-256 signatures (rcgen's default), the certificates valid
//! from 1975 to 4096 (rcgen's defaults): fit for tests, never for production. Sluice reads
//! them as `[server.tls] cert_file = "gw.pem"`, `key_file = "gw.key"`; clients trust
//! `ca.pem` (`sluice-bench load --ca-file`, `curl --cacert`, `SSL_CERT_FILE`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// `sluice-bench certs` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory to write ca.pem, gw.pem and gw.key into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// The server certificate's name: a DNS name (SNI) or an IP address; 127.0.0.1 is
    /// always added.
    #[arg(long, default_value = "localhost")]
    pub name: String,
}

/// Where [`write`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The CA certificate, PEM: what clients trust.
    pub ca: PathBuf,
    /// The server certificate, PEM.
    pub cert: PathBuf,
    /// The server certificate's private key, PKCS#8 PEM.
    pub key: PathBuf,
}

/// Generates a CA and a server certificate for `name` (and 127.0.0.1) and writes `ca.pem`,
/// `gw.pem` and `gw.key` into `dir` (created if missing), replacing files of those names.
///
/// # Errors
/// A `name` that is neither a DNS name nor an IP address, or a file that cannot be written.
pub fn write(dir: &Path, name: &str) -> anyhow::Result<CertFiles> {
    // What a client could ask for: rcgen would take any IA5 text as a DNS name.
    rustls::pki_types::ServerName::try_from(name)
        .map_err(|_| anyhow::anyhow!("{name:?} is not a DNS name or an IP address"))?;
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name = common_name("sluice-bench test CA");
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("signing the CA certificate")?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec![name.to_owned()];
    if name != "127.0.0.1" {
        names.push("127.0.0.1".to_owned());
    }
    let mut params = CertificateParams::new(names)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.distinguished_name = common_name(name);
    let key = KeyPair::generate().context("generating the server key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the server certificate")?;

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = CertFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("gw.pem"),
        key: dir.join("gw.key"),
    };
    let put = |path: &Path, text: &str| {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    };
    put(&files.ca, &ca_cert.pem())?;
    put(&files.cert, &cert.pem())?;
    // Readable by its owner only, as a key file should be; set before the key goes in.
    put(&files.key, "")?;
    set_owner_only(&files.key)?;
    put(&files.key, &key.serialize_pem())?;
    Ok(files)
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn set_owner_only(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Runs `sluice-bench certs`: writes the files and prints where they are.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let files = write(&args.out, &args.name)?;
    println!("CA certificate (trust this): {}", files.ca.display());
    println!("server certificate:          {}", files.cert.display());
    println!("server key:                  {}", files.key.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice::tls::pem;

    #[test]
    fn writes_a_ca_and_a_certificate_it_signed_for_the_name() {
        let dir = std::env::temp_dir().join(format!("sluice-bench-certs-{}", std::process::id()));
        let files = write(&dir, "gw.test").unwrap();
        let ca = std::fs::read(&files.ca).unwrap();
        let cert = std::fs::read(&files.cert).unwrap();
        let key = std::fs::read(&files.key).unwrap();
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777
        };
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(mode, 0o600);
        // Sluice reads the pair as its listener would, and the CA as a trust store.
        sluice::tls::server::certified_key(&cert, &key).unwrap();
        let roots = std::sync::Arc::new(pem::roots(&ca).unwrap());
        // The leaf verifies under the CA for its name and for 127.0.0.1, not for another.
        let leaf = pem::certificates(&cert).unwrap().remove(0);
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            sluice::tls::provider(),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let verify = |name: &str| {
            let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                verifier.as_ref(),
                &leaf,
                &[],
                &name,
                &[],
                now,
            )
        };
        verify("gw.test").unwrap();
        verify("127.0.0.1").unwrap();
        assert!(verify("other.test").is_err());
        assert!(write(&dir, "not a name!").is_err());
        assert!(!dir.exists());
    }
}
