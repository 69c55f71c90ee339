//! PEM files as TLS needs them: a certificate chain (leaf first), a private key (PKCS#8,
//! SEC1 or PKCS#1), a bundle of CA certificates. RFC 7468 text, read by `rustls-pki-types`.
//! Each error is a sentence a config error can carry after the file's name.

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// The certificates of `pem`, in order: for a chain, the leaf first, then its issuers.
///
/// # Errors
/// Text that is not PEM, a certificate block that does not decode, or no certificate at all.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not a PEM certificate file: {}", malformed(&e)))?;
    if certs.is_empty() {
        return Err("holds no certificate (expected -----BEGIN CERTIFICATE-----)".to_string());
    }
    Ok(certs)
}

/// The first private key of `pem`: `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY` (SEC1) or
/// `RSA PRIVATE KEY` (PKCS#1).
///
/// # Errors
/// No private key block, or one that does not decode (an encrypted key, for one: Sluice
/// reads keys without a passphrase).
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            "holds no private key (expected PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`; encrypted keys are not read)".to_string()
        }
        other => format!("is not a PEM private key: {}", malformed(&other)),
    })
}

/// What is wrong with malformed PEM, in words that quote nothing of the file: the parser's
/// own messages carry the offending line's bytes, which for a key file is the key.
fn malformed(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => {
            "a -----BEGIN block is never closed by its -----END line (were its line breaks lost?)"
        }
        pem::Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a block's contents are not base64",
        pem::Error::SectionTooLarge => "a block is larger than 256 MB",
        pem::Error::NoItemsFound => "no PEM block in it",
        _ => "the file cannot be read as PEM",
    }
}

/// A trust store of every certificate in `pem`.
///
/// # Errors
/// As [`certificates`]; or a certificate that is not a usable trust anchor.
pub fn roots(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for (i, cert) in certificates(pem)?.into_iter().enumerate() {
        store
            .add(cert)
            .map_err(|e| format!("certificate {} is not a usable CA: {e}", i + 1))?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_reads_back() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let chain = certificates(cert.pem().as_bytes()).unwrap();
        assert_eq!(chain.len(), 1);
        assert!(private_key(key.serialize_pem().as_bytes()).is_ok());
        assert_eq!(roots(cert.pem().as_bytes()).unwrap().len(), 1);
    }

    #[test]
    fn wrong_files_say_what_they_hold() {
        let key = rcgen::KeyPair::generate().unwrap();
        let err = certificates(key.serialize_pem().as_bytes()).unwrap_err();
        assert!(err.starts_with("holds no certificate"), "{err}");
        let err = private_key(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(err.starts_with("holds no private key"), "{err}");
        assert!(certificates(b"not pem at all").is_err());
    }

    #[test]
    fn malformed_files_are_described_without_quoting_them() {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        // A key whose line breaks were lost (copied through a secret store).
        let lines: Vec<&str> = key.lines().collect();
        let one_line = format!(
            "{} {} {}\n",
            lines[0],
            lines[1..lines.len() - 1].join(""),
            lines[lines.len() - 1]
        );
        let err = private_key(one_line.as_bytes()).unwrap_err();
        assert!(err.contains("never closed"), "{err}");
        assert!(!err.contains('['), "{err}");
        let body = lines[1];
        assert!(!err.contains(&body[..16]), "{err}");
        let cut = &key[..key.len() / 2];
        let err = private_key(cut.as_bytes()).unwrap_err();
        assert!(err.contains("never closed") && !err.contains('['), "{err}");
    }
}
