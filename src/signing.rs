//! Signed verdicts: an Ed25519 signature over a canonical encoding of what a checker was told, so
//! that a bank can prove later what the registry said about a card, and when, as an OCSP response
//! proves a certificate's status.
//!
//! The keys file lists the signing keys with their validity, so that a key can be rolled over
//! without a gap: the newest key valid at the time of a verdict signs it, and `GetSigningKeys`
//! serves every listed public key for checking older verdicts.
//!
//! ```toml
//! [[key]]
//! private_key = "verdicts-2026.pem"   # PKCS#8 PEM (openssl genpkey -algorithm ed25519)
//! not_before = 2026-01-01T00:00:00Z
//! not_after = 2027-01-01T00:00:00Z
//! ```

use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::proto::{self, v1 as pb};

/// The most bytes of a caller's nonce.
pub const MAX_NONCE_BYTES: usize = 64;
const DOMAIN: &[u8] = b"idguard-verdict-v1";

/// Why the keys file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("signing keys {}: {why}", path.display())]
    File { path: PathBuf, why: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    key: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    private_key: PathBuf,
    not_before: toml::value::Datetime,
    not_after: toml::value::Datetime,
}

struct Key {
    id: String,
    signing: SigningKey,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// The keys verdicts are signed with.
pub struct VerdictSigner {
    /// Newest `not_before` first.
    keys: Vec<Key>,
}

/// `key_id` of a public key: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

impl VerdictSigner {
    /// Reads the keys file at `path`; key paths are relative to its directory.
    pub fn read(path: &Path) -> Result<Self, KeysError> {
        let refuse = |why: String| KeysError::File {
            path: path.to_owned(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|error| refuse(error.to_string()))?;
        let file: KeysFile = toml::from_str(&text).map_err(|error| refuse(error.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut keys = Vec::new();
        for entry in file.key {
            let key_path = base.join(&entry.private_key);
            let pem = std::fs::read_to_string(&key_path)
                .map_err(|error| refuse(format!("{}: {error}", key_path.display())))?;
            let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|error| {
                refuse(format!(
                    "{}: not a PKCS#8 Ed25519 key: {error}",
                    key_path.display()
                ))
            })?;
            let instant = |value: &toml::value::Datetime, field: &str| {
                OffsetDateTime::parse(&value.to_string(), &Rfc3339).map_err(|_| {
                    refuse(format!(
                        "{field}: {value} is not a date-time with an offset"
                    ))
                })
            };
            let (not_before, not_after) = (
                instant(&entry.not_before, "not_before")?,
                instant(&entry.not_after, "not_after")?,
            );
            if not_after <= not_before {
                return Err(refuse(format!(
                    "{}: not_after must be after not_before",
                    entry.private_key.display()
                )));
            }
            keys.push(Key {
                id: key_id(signing.verifying_key().as_bytes()),
                signing,
                not_before,
                not_after,
            });
        }
        if keys.is_empty() {
            return Err(refuse("no [[key]] given".into()));
        }
        keys.sort_by_key(|key| std::cmp::Reverse(key.not_before));
        Ok(Self { keys })
    }

    /// Whether some key may sign at `now`: checked at start-up, so that a server configured to
    /// sign never answers unsigned because of a mistyped date.
    pub fn can_sign_at(&self, now: OffsetDateTime) -> bool {
        self.key_at(now).is_some()
    }

    fn key_at(&self, now: OffsetDateTime) -> Option<&Key> {
        self.keys
            .iter()
            .find(|key| key.not_before <= now && now < key.not_after)
    }

    /// Signs `verdict` about `card` as of `now`, binding `nonce`; leaves it unsigned (and logs
    /// it) if no key is valid at `now`.
    pub fn sign(
        &self,
        card: &pb::CardRef,
        verdict: &mut pb::CheckResponse,
        nonce: &[u8],
        now: OffsetDateTime,
    ) {
        let Some(key) = self.key_at(now) else {
            tracing::error!("no signing key is valid now: verdicts go out unsigned");
            return;
        };
        let mut signature = pb::VerdictSignature {
            key_id: key.id.clone(),
            signed_at: Some(proto::timestamp(now)),
            nonce: nonce.to_vec(),
            signature: Vec::new(),
        };
        let message = canonical_bytes(card, verdict, &signature);
        signature.signature = key.signing.sign(&message).to_bytes().to_vec();
        verdict.signature = Some(signature);
    }

    /// Every key's public half and validity, for `GetSigningKeys`.
    pub fn public_keys(&self) -> Vec<pb::SigningKey> {
        self.keys
            .iter()
            .map(|key| pb::SigningKey {
                key_id: key.id.clone(),
                public_key: key.signing.verifying_key().as_bytes().to_vec(),
                not_before: Some(proto::timestamp(key.not_before)),
                not_after: Some(proto::timestamp(key.not_after)),
            })
            .collect()
    }
}

/// Why a verdict did not verify.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the verdict carries no signature")]
    Unsigned,
    #[error("no key {0:?} among the signing keys")]
    UnknownKey(String),
    #[error("key {0:?} was not valid at the verdict's signed_at")]
    OutsideValidity(String),
    #[error("the signature does not match the verdict: it was changed, or is not the registry's")]
    Mismatch,
}

/// Checks `verdict` about `card` against `keys` (from `GetSigningKeys`).
pub fn verify(
    card: &pb::CardRef,
    verdict: &pb::CheckResponse,
    keys: &[pb::SigningKey],
) -> Result<(), VerifyError> {
    let signature = verdict.signature.as_ref().ok_or(VerifyError::Unsigned)?;
    let key = keys
        .iter()
        .find(|key| key.key_id == signature.key_id)
        .ok_or_else(|| VerifyError::UnknownKey(signature.key_id.clone()))?;
    let instant = |at: &Option<prost_types::Timestamp>| at.as_ref().and_then(proto::instant);
    let valid = match (
        instant(&signature.signed_at),
        instant(&key.not_before),
        instant(&key.not_after),
    ) {
        (Some(at), Some(from), Some(until)) => from <= at && at < until,
        _ => false,
    };
    if !valid {
        return Err(VerifyError::OutsideValidity(key.key_id.clone()));
    }
    let public = <[u8; 32]>::try_from(key.public_key.as_slice())
        .ok()
        .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
        .ok_or(VerifyError::Mismatch)?;
    let bytes = Signature::from_slice(&signature.signature).map_err(|_| VerifyError::Mismatch)?;
    public
        .verify(&canonical_bytes(card, verdict, signature), &bytes)
        .map_err(|_| VerifyError::Mismatch)
}

/// The signed bytes, as `VerdictSignature` in the proto documents them.
fn canonical_bytes(
    card: &pb::CardRef,
    verdict: &pb::CheckResponse,
    signature: &pb::VerdictSignature,
) -> Vec<u8> {
    fn text(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    fn instant(out: &mut Vec<u8>, at: Option<&prost_types::Timestamp>) {
        let (seconds, nanos) = at.map_or((0, 0), |at| (at.seconds, at.nanos));
        out.extend_from_slice(&seconds.to_be_bytes());
        out.extend_from_slice(&(nanos as u32).to_be_bytes());
    }
    let mut out = Vec::with_capacity(160);
    text(&mut out, DOMAIN);
    text(&mut out, card.id_number.as_bytes());
    text(&mut out, card.issue_date.as_bytes());
    text(&mut out, card.expiry_date.as_bytes());
    out.extend_from_slice(&(verdict.status as u32).to_be_bytes());
    out.extend_from_slice(&(verdict.reason as u32).to_be_bytes());
    instant(&mut out, verdict.invalid_since.as_ref());
    out.extend_from_slice(&verdict.sequence.to_be_bytes());
    instant(&mut out, signature.signed_at.as_ref());
    text(&mut out, &signature.nonce);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePrivateKey;

    fn signer_from_seed(dir: &Path, seed: u8) -> VerdictSigner {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let pem = key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        std::fs::write(dir.join("key.pem"), pem.as_bytes()).unwrap();
        let keys = dir.join("keys.toml");
        std::fs::write(
            &keys,
            "[[key]]\nprivate_key = \"key.pem\"\nnot_before = 2026-01-01T00:00:00Z\nnot_after = 2027-01-01T00:00:00Z\n",
        )
        .unwrap();
        VerdictSigner::read(&keys).unwrap()
    }

    fn verdict() -> (pb::CardRef, pb::CheckResponse) {
        let card = pb::CardRef {
            id_number: "11010519491231002X".into(),
            issue_date: "20150101".into(),
            expiry_date: "20350101".into(),
        };
        let verdict = pb::CheckResponse {
            status: pb::CardStatus::Invalid.into(),
            reason: pb::Reason::Stolen.into(),
            invalid_since: Some(prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 5,
            }),
            sequence: 42,
            detail: "stolen".into(),
            signature: None,
        };
        (card, verdict)
    }

    #[test]
    fn a_signed_verdict_verifies_and_any_changed_field_fails() {
        let dir = tempfile::tempdir().unwrap();
        let signer = signer_from_seed(dir.path(), 7);
        let keys = signer.public_keys();
        let (card, mut signed) = verdict();
        signer.sign(
            &card,
            &mut signed,
            b"nonce-1",
            time::macros::datetime!(2026-11-22 10:00 UTC),
        );
        assert_eq!(verify(&card, &signed, &keys), Ok(()));

        let mut changed = signed.clone();
        changed.reason = pb::Reason::Lost.into();
        assert_eq!(verify(&card, &changed, &keys), Err(VerifyError::Mismatch));
        let mut changed = signed.clone();
        changed.sequence += 1;
        assert_eq!(verify(&card, &changed, &keys), Err(VerifyError::Mismatch));
        let mut other_card = card.clone();
        other_card.issue_date = "20150102".into();
        assert_eq!(
            verify(&other_card, &signed, &keys),
            Err(VerifyError::Mismatch)
        );
        let mut changed = signed.clone();
        if let Some(signature) = changed.signature.as_mut() {
            signature.nonce = b"nonce-2".to_vec();
        }
        assert_eq!(verify(&card, &changed, &keys), Err(VerifyError::Mismatch));
        let other = signer_from_seed(dir.path(), 8).public_keys();
        assert!(matches!(
            verify(&card, &signed, &other),
            Err(VerifyError::UnknownKey(_))
        ));
    }

    #[test]
    fn keys_sign_only_within_their_validity() {
        let dir = tempfile::tempdir().unwrap();
        let signer = signer_from_seed(dir.path(), 7);
        assert!(!signer.can_sign_at(time::macros::datetime!(2025-12-31 23:59 UTC)));
        assert!(signer.can_sign_at(time::macros::datetime!(2026-06-01 0:00 UTC)));
        let (card, mut unsigned) = verdict();
        signer.sign(
            &card,
            &mut unsigned,
            b"",
            time::macros::datetime!(2027-01-01 0:00 UTC),
        );
        assert_eq!(unsigned.signature, None);
    }
}
