//! The signature algorithms Sluice verifies and sets of them (a key's pin). A leaf shared by
//! [`super::jwt`] (token headers, issuers) and [`super::jwks`] (keys pinned as they are
//! parsed), so neither imports the other for them.

/// A signature algorithm Sluice verifies (RFC 7518 §3.1): every name the config reference
/// accepts for `algorithms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlg {
    /// HMAC with SHA-256, with a shared secret of at least 32 bytes.
    HS256,
    /// HMAC with SHA-384, with a shared secret of at least 48 bytes.
    HS384,
    /// HMAC with SHA-512, with a shared secret of at least 64 bytes.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256, with an RSA public key.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384, with an RSA public key.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512, with an RSA public key.
    RS512,
    /// RSASSA-PSS with SHA-256 and MGF1 with SHA-256, with an RSA public key.
    PS256,
    /// ECDSA on P-256 with SHA-256, with an EC public key.
    ES256,
    /// ECDSA on P-384 with SHA-384, with an EC public key.
    ES384,
}

impl JwtAlg {
    /// Every algorithm, in the order the config reference lists them.
    pub const ALL: [JwtAlg; 9] = [
        Self::HS256,
        Self::HS384,
        Self::HS512,
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::ES256,
        Self::ES384,
        Self::PS256,
    ];

    /// Whether it is an HMAC algorithm (verified with a shared secret).
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }

    /// Whether it verifies with an RSA public key.
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::RS256 | Self::RS384 | Self::RS512 | Self::PS256)
    }

    /// The shortest HMAC secret accepted, in bytes (the hash's output size, RFC 7518 §3.2);
    /// 0 for the others.
    pub fn min_secret_len(self) -> usize {
        match self {
            Self::HS256 => 32,
            Self::HS384 => 48,
            Self::HS512 => 64,
            _ => 0,
        }
    }

    /// The algorithm named exactly `name` (JOSE names are case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    pub(super) fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            Self::HS256 => A::HS256,
            Self::HS384 => A::HS384,
            Self::HS512 => A::HS512,
            Self::RS256 => A::RS256,
            Self::RS384 => A::RS384,
            Self::RS512 => A::RS512,
            Self::PS256 => A::PS256,
            Self::ES256 => A::ES256,
            Self::ES384 => A::ES384,
        }
    }
}

/// A set of [`JwtAlg`]s (a key's pin, an issuer's union of pins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlgSet(u16);

impl AlgSet {
    /// The set holding only `alg`.
    pub fn of(alg: JwtAlg) -> Self {
        Self(alg.bit())
    }

    /// The set of these algorithms.
    pub fn from_algs(algs: &[JwtAlg]) -> Self {
        Self::of_const(algs)
    }

    /// The set of these algorithms, in a constant.
    pub const fn of_const(algs: &[JwtAlg]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < algs.len() {
            bits |= 1 << (algs[i] as u16);
            i += 1;
        }
        Self(bits)
    }

    /// The set without `alg`.
    pub fn without(self, alg: JwtAlg) -> Self {
        Self(self.0 & !alg.bit())
    }

    /// Whether `alg` is in the set.
    pub fn contains(self, alg: JwtAlg) -> bool {
        self.0 & alg.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The algorithms in both sets.
    pub fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// The algorithms in either set.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}
