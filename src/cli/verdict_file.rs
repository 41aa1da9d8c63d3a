//! Signed verdicts and signing keys as JSON files, so that a bank can keep what it was told and
//! check it offline years later with `idguard verify`, without a gRPC client.

use serde::{Deserialize, Serialize};

use super::CliError;
use crate::proto::v1 as pb;

/// A verdict as `idguard check --save` writes it: the card as sent and the whole answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedVerdict {
    pub id_number: String,
    pub issue_date: String,
    pub expiry_date: String,
    /// `CardStatus` and `Reason` numbers of the proto.
    pub status: i32,
    pub reason: i32,
    pub invalid_since: Option<Instant>,
    pub sequence: u64,
    pub detail: String,
    pub signature: Option<SavedSignature>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instant {
    pub seconds: i64,
    pub nanos: i32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedSignature {
    pub key_id: String,
    pub signed_at: Option<Instant>,
    pub nonce_hex: String,
    pub signature_hex: String,
}

/// A signing key as `idguard signing-keys` writes it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedKey {
    pub key_id: String,
    pub public_key_hex: String,
    pub not_before: Option<Instant>,
    pub not_after: Option<Instant>,
}

impl From<&prost_types::Timestamp> for Instant {
    fn from(at: &prost_types::Timestamp) -> Self {
        Self {
            seconds: at.seconds,
            nanos: at.nanos,
        }
    }
}

impl From<Instant> for prost_types::Timestamp {
    fn from(at: Instant) -> Self {
        Self {
            seconds: at.seconds,
            nanos: at.nanos,
        }
    }
}

/// A field of a saved file that does not read back.
#[derive(Debug, thiserror::Error)]
#[error("{0}: not hexadecimal")]
pub struct NotHex(&'static str);

fn unhex(field: &'static str, text: &str) -> Result<Vec<u8>, NotHex> {
    hex::decode(text).map_err(|_| NotHex(field))
}

impl SavedVerdict {
    /// The verdict on `card` as the wire had it, ready to be written.
    pub fn new(card: &pb::CardRef, verdict: &pb::CheckResponse) -> Self {
        Self {
            id_number: card.id_number.clone(),
            issue_date: card.issue_date.clone(),
            expiry_date: card.expiry_date.clone(),
            status: verdict.status,
            reason: verdict.reason,
            invalid_since: verdict.invalid_since.as_ref().map(Instant::from),
            sequence: verdict.sequence,
            detail: verdict.detail.clone(),
            signature: verdict.signature.as_ref().map(|signature| SavedSignature {
                key_id: signature.key_id.clone(),
                signed_at: signature.signed_at.as_ref().map(Instant::from),
                nonce_hex: hex::encode(&signature.nonce),
                signature_hex: hex::encode(&signature.signature),
            }),
        }
    }

    /// The card and verdict, as the wire had them.
    pub fn to_wire(&self) -> Result<(pb::CardRef, pb::CheckResponse), NotHex> {
        let card = pb::CardRef {
            id_number: self.id_number.clone(),
            issue_date: self.issue_date.clone(),
            expiry_date: self.expiry_date.clone(),
        };
        let signature = match &self.signature {
            None => None,
            Some(saved) => Some(pb::VerdictSignature {
                key_id: saved.key_id.clone(),
                signed_at: saved.signed_at.map(Into::into),
                nonce: unhex("signature.nonce_hex", &saved.nonce_hex)?,
                signature: unhex("signature.signature_hex", &saved.signature_hex)?,
            }),
        };
        let verdict = pb::CheckResponse {
            status: self.status,
            reason: self.reason,
            invalid_since: self.invalid_since.map(Into::into),
            sequence: self.sequence,
            detail: self.detail.clone(),
            signature,
        };
        Ok((card, verdict))
    }
}

impl SavedKey {
    /// A key from `GetSigningKeys`, ready to be written.
    pub fn new(key: &pb::SigningKey) -> Self {
        Self {
            key_id: key.key_id.clone(),
            public_key_hex: hex::encode(&key.public_key),
            not_before: key.not_before.as_ref().map(Instant::from),
            not_after: key.not_after.as_ref().map(Instant::from),
        }
    }

    /// The key as `GetSigningKeys` returned it.
    pub fn to_wire(&self) -> Result<pb::SigningKey, NotHex> {
        Ok(pb::SigningKey {
            key_id: self.key_id.clone(),
            public_key: unhex("public_key_hex", &self.public_key_hex)?,
            not_before: self.not_before.map(Into::into),
            not_after: self.not_after.map(Into::into),
        })
    }
}

/// Writes `value` as pretty JSON, the form people keep and read.
pub(super) fn write_json(
    path: &std::path::Path,
    value: &impl serde::Serialize,
) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|error| CliError::Write {
        path: path.to_owned(),
        source: error.into(),
    })?;
    std::fs::write(path, text + "\n").map_err(|source| CliError::Write {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn read_json<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> Result<T, CliError> {
    let read = |source| CliError::Read {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read)?;
    serde_json::from_str(&text).map_err(|error| read(error.into()))
}
