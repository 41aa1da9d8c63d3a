//! Signed stream messages: every event a node publishes carries its Ed25519 signature over the
//! stream's name and the message's bytes, and a follower applies only messages signed by a key it
//! trusts. So a NATS client allowed to publish on the subject still cannot write as any
//! principal, authority or time: what it sends is refused, loudly, by every node.
//!
//! ```toml
//! private_key = "node-a.pem"                            # this node's key (PKCS#8 PEM)
//! trusted = ["node-a.pub", "node-b.pub", "node-c.pub"]  # every node's public key (SPKI PEM)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use async_nats::HeaderMap;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Deserialize;

use crate::signing::key_id;

/// The header naming the key a message is signed with ([`key_id`] of its public key).
const KEY_HEADER: &str = "Idguard-Key";
/// The header carrying the signature, in hex.
const SIGNATURE_HEADER: &str = "Idguard-Signature";
/// Separates these signatures from every other use of the keys.
const DOMAIN: &[u8] = b"idguard-stream-v1";

/// Why the stream keys file was refused.
#[derive(Debug, thiserror::Error)]
#[error("cluster keys {}: {why}", path.display())]
pub struct StreamKeysError {
    path: PathBuf,
    why: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    private_key: PathBuf,
    trusted: Vec<PathBuf>,
}

/// This node's signing key and the keys of the nodes whose messages it applies.
pub struct StreamKeys {
    signing: SigningKey,
    id: String,
    trusted: HashMap<String, VerifyingKey>,
}

impl std::fmt::Debug for StreamKeys {
    /// The key ids only: a private key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamKeys")
            .field("id", &self.id)
            .field("trusted", &self.trusted.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl StreamKeys {
    /// Reads the keys file at `path`; key paths are relative to its directory. This node's own
    /// key is trusted whether listed or not.
    pub fn read(path: &Path) -> Result<Self, StreamKeysError> {
        let refuse = |why: String| StreamKeysError {
            path: path.to_owned(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|error| refuse(error.to_string()))?;
        let file: KeysFile = toml::from_str(&text).map_err(|error| refuse(error.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let read = |relative: &Path| {
            let full = base.join(relative);
            std::fs::read_to_string(&full)
                .map(|pem| (full.clone(), pem))
                .map_err(|error| refuse(format!("{}: {error}", full.display())))
        };
        let (key_path, pem) = read(&file.private_key)?;
        let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|error| {
            refuse(format!(
                "{}: not a PKCS#8 Ed25519 private key: {error}",
                key_path.display()
            ))
        })?;
        let own = signing.verifying_key();
        let mut trusted = HashMap::from([(key_id(own.as_bytes()), own)]);
        for relative in &file.trusted {
            let (key_path, pem) = read(relative)?;
            let key = VerifyingKey::from_public_key_pem(&pem).map_err(|error| {
                refuse(format!(
                    "{}: not an Ed25519 public key (SPKI PEM): {error}",
                    key_path.display()
                ))
            })?;
            trusted.insert(key_id(key.as_bytes()), key);
        }
        Ok(Self {
            id: key_id(own.as_bytes()),
            signing,
            trusted,
        })
    }

    /// The headers that sign `payload` for `stream`.
    pub fn seal(&self, stream: &str, payload: &[u8]) -> HeaderMap {
        let signature = self.signing.sign(&signed_bytes(stream, payload));
        let mut headers = HeaderMap::new();
        headers.insert(KEY_HEADER, self.id.as_str());
        headers.insert(SIGNATURE_HEADER, hex::encode(signature.to_bytes()));
        headers
    }

    /// Whether `payload`, read from `stream` with `headers`, is signed by a trusted key; why not
    /// otherwise.
    pub fn open(
        &self,
        stream: &str,
        payload: &[u8],
        headers: Option<&HeaderMap>,
    ) -> Result<(), String> {
        let header = |name| {
            headers
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_owned())
                .ok_or_else(|| format!("no {name} header: not published by an idguard node"))
        };
        let id = header(KEY_HEADER)?;
        let key = self
            .trusted
            .get(&id)
            .ok_or_else(|| format!("signed by key {id:?}, which this node does not trust"))?;
        let mut signature = [0u8; 64];
        hex::decode_to_slice(header(SIGNATURE_HEADER)?, &mut signature)
            .map_err(|_| format!("{SIGNATURE_HEADER} is not 64 bytes of hex"))?;
        key.verify(
            &signed_bytes(stream, payload),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| format!("the signature of key {id:?} does not match the message"))
    }
}

/// What is signed: the domain, the stream's name (so that a message cannot be replayed into
/// another registry's stream) and the payload.
fn signed_bytes(stream: &str, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(DOMAIN.len() + 1 + stream.len() + payload.len());
    bytes.extend_from_slice(DOMAIN);
    bytes.push(stream.len() as u8);
    bytes.extend_from_slice(stream.as_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &Path, name: &str, trusted: &[&str]) -> StreamKeys {
        let list: Vec<String> = trusted.iter().map(|t| format!("\"{t}.pub\"")).collect();
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "private_key = \"{name}.pem\"\ntrusted = [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        StreamKeys::read(&file).unwrap()
    }

    #[test]
    fn a_message_opens_only_with_a_trusted_key_and_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b", "stranger"] {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), pair.serialize_pem()).unwrap();
            std::fs::write(
                dir.path().join(format!("{name}.pub")),
                pair.public_key_pem(),
            )
            .unwrap();
        }
        let a = keys(dir.path(), "a", &["b"]);
        let b = keys(dir.path(), "b", &["a"]);
        let stranger = keys(dir.path(), "stranger", &[]);
        let headers = a.seal("REGISTRY", b"event");
        assert_eq!(b.open("REGISTRY", b"event", Some(&headers)), Ok(()));
        assert_eq!(a.open("REGISTRY", b"event", Some(&headers)), Ok(()));
        assert!(b.open("REGISTRY", b"evens", Some(&headers)).is_err());
        assert!(b.open("OTHER", b"event", Some(&headers)).is_err());
        assert!(
            b.open("REGISTRY", b"event", None)
                .unwrap_err()
                .contains("no Idguard-Key")
        );
        let forged = stranger.seal("REGISTRY", b"event");
        assert!(
            b.open("REGISTRY", b"event", Some(&forged))
                .unwrap_err()
                .contains("does not trust")
        );
        assert!(!format!("{a:?}").contains("signing"));
    }
}
