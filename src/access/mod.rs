//! Who is calling, and what they may do: principals from client certificates or bearer tokens,
//! roles and authority scopes from the access policy, per-principal rate limits, and the global
//! limit of calls in flight.
//!
//! A server without a policy is open, and only ever on loopback (see [`crate::server`]): every
//! caller is then the principal `local` with the admin role.

mod policy;
mod rate;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use policy::{Policy, PolicyError};
pub use rate::{Rate, TokenBucket};

/// The header a checker names its branch or terminal with; it goes into the hit log.
pub const TERMINAL_HEADER: &str = "x-idguard-terminal";
/// The principal every caller is on a server without an access policy.
pub const LOCAL_PRINCIPAL: &str = "local";

/// What a principal is for; each role grants one family of calls, and `admin` all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Banks, hotels, ticketing: `Verification`.
    Checker,
    /// Police loss-report systems and issuing organs: `Apply` and `Submit`, within their scopes.
    Reporter,
    /// `GetRecord`, `Watch` and `WatchHits`.
    Auditor,
    /// Everything, and the `Admin` service.
    Admin,
}

impl Role {
    /// The role's name, as the policy file and messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Checker => "checker",
            Role::Reporter => "reporter",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

/// The role a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Any authenticated principal (`GetSigningKeys`).
    AnyRole,
    Role(Role),
}

/// What a checker's verdicts reveal: minimal disclosure, since a hotel has no need to know that a
/// guest's card was stolen rather than superseded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Disclosure {
    /// Status and sequence only.
    Status,
    /// Also the reason, `invalid_since` and the explanation.
    Full,
}

/// The division codes a reporter may report for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scopes {
    Nationwide,
    /// Division-code prefixes such as `4403` (Shenzhen).
    Prefixes(Vec<String>),
}

/// SHA-256 of a bearer token: the policy holds only these, so a leaked policy file grants nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of a token as a caller sends it.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// A digest written as 64 hexadecimal digits, as the policy holds it.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut digest = [0; 32];
        hex::decode_to_slice(text, &mut digest).ok()?;
        Some(Self(digest))
    }

    /// The 64 hexadecimal digits the policy's `token_sha256` takes.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

/// What a principal has done since start-up, for operators (`Admin.ListCallers`).
#[derive(Debug, Default)]
pub struct Activity {
    pub checks_valid: AtomicU64,
    pub checks_invalid: AtomicU64,
    pub checks_malformed: AtomicU64,
    pub hits: AtomicU64,
    pub rate_limited: AtomicU64,
}

impl Activity {
    /// Adds `amount` to one of the counters (relaxed: they are statistics, not synchronisation).
    pub fn add(counter: &AtomicU64, amount: u64) {
        if amount > 0 {
            counter.fetch_add(amount, Ordering::Relaxed);
        }
    }
}

/// A configured caller.
#[derive(Debug)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    pub disclosure: Disclosure,
    pub rate: Option<Rate>,
    scopes: Scopes,
    limiter: Option<TokenBucket>,
    pub activity: Activity,
}

impl Principal {
    /// A principal with a fresh bucket and zeroed activity.
    pub fn new(
        name: String,
        role: Role,
        scopes: Scopes,
        disclosure: Disclosure,
        rate: Option<Rate>,
    ) -> Self {
        Self {
            name,
            role,
            disclosure,
            rate,
            scopes,
            limiter: rate.map(TokenBucket::new),
            activity: Activity::default(),
        }
    }

    /// Whether this principal may report events of `authority` (a division code and a suffix).
    pub fn may_report_for(&self, authority: &str) -> bool {
        let reporter = matches!(self.role, Role::Reporter | Role::Admin);
        reporter
            && match &self.scopes {
                Scopes::Nationwide => true,
                Scopes::Prefixes(prefixes) => {
                    prefixes.iter().any(|prefix| authority.starts_with(prefix))
                }
            }
    }

    fn grants(&self, needs: Needs) -> bool {
        match needs {
            Needs::AnyRole => true,
            Needs::Role(role) => self.role == role || self.role == Role::Admin,
        }
    }

    /// The scopes, as the policy gave them, for messages to this principal.
    fn scopes_text(&self) -> String {
        match &self.scopes {
            Scopes::Nationwide => "*".into(),
            Scopes::Prefixes(prefixes) => prefixes.join(", "),
        }
    }
}

/// An authenticated, authorised call's caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    /// From [`TERMINAL_HEADER`]; empty without one.
    pub terminal: String,
}

impl Caller {
    /// PERMISSION_DENIED unless the principal may report for `authority`.
    pub fn may_report_for(&self, authority: &str) -> Result<(), AccessError> {
        if self.principal.may_report_for(authority) {
            return Ok(());
        }
        Err(AccessError::OutOfScope {
            authority: authority.to_owned(),
            scopes: self.principal.scopes_text(),
        })
    }
}

/// Why a call was refused before it did anything.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("this call needs the {needs} role; principal {principal:?} has the {role} role")]
    WrongRole {
        needs: &'static str,
        principal: String,
        role: &'static str,
    },
    #[error("authority: {authority:?} is outside this principal's scopes ({scopes})")]
    OutOfScope { authority: String, scopes: String },
    #[error("{TERMINAL_HEADER}: at most 64 printable ASCII characters")]
    BadTerminal,
    #[error("rate limit of principal {principal:?} reached: retry after {} ms", retry_after.as_millis())]
    RateLimited {
        principal: String,
        retry_after: Duration,
    },
    #[error("the server is answering its limit of {0} calls: retry with backoff, or another node")]
    Overloaded(usize),
}

impl From<AccessError> for Status {
    fn from(error: AccessError) -> Self {
        let message = error.to_string();
        match error {
            AccessError::Unauthenticated(_) => Status::unauthenticated(message),
            AccessError::WrongRole { .. } | AccessError::OutOfScope { .. } => {
                Status::permission_denied(message)
            }
            AccessError::BadTerminal => Status::invalid_argument(message),
            AccessError::RateLimited { retry_after, .. } => {
                // The standard google.rpc.RetryInfo detail, plus a header for simple clients.
                let mut status = Status::with_error_details(
                    Code::ResourceExhausted,
                    message,
                    ErrorDetails::with_retry_info(Some(retry_after)),
                );
                let millis = retry_after.as_millis().max(1).to_string();
                if let Ok(value) = millis.parse() {
                    status.metadata_mut().insert("retry-after-ms", value);
                }
                status
            }
            AccessError::Overloaded(_) => Status::unavailable(message),
        }
    }
}

/// The gatekeeper every call goes through.
#[derive(Debug)]
pub struct Access {
    /// `None`: open, every caller is [`Access::local`].
    policy: Option<Policy>,
    local: Arc<Principal>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl Access {
    /// `policy`, or open without one; at most `max_in_flight` calls answered at once.
    pub fn new(policy: Option<Policy>, max_in_flight: usize) -> Self {
        Self {
            policy,
            local: Arc::new(Principal::new(
                LOCAL_PRINCIPAL.into(),
                Role::Admin,
                Scopes::Nationwide,
                Disclosure::Full,
                None,
            )),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    /// Every configured principal, by name (`local` alone on an open server).
    pub fn principals(&self) -> Vec<Arc<Principal>> {
        let mut all: Vec<_> = match &self.policy {
            Some(policy) => policy.by_name.values().cloned().collect(),
            None => vec![Arc::clone(&self.local)],
        };
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Who is calling, if they may make a call that `needs` this.
    pub fn authorize<T>(&self, request: &Request<T>, needs: Needs) -> Result<Caller, AccessError> {
        let principal = self.authenticate(request)?;
        // The server's per-call span declares the field; every log line of the call carries it.
        tracing::Span::current().record("principal", principal.name.as_str());
        if let Needs::Role(role) = needs
            && !principal.grants(needs)
        {
            return Err(AccessError::WrongRole {
                needs: role.as_str(),
                principal: principal.name.clone(),
                role: principal.role.as_str(),
            });
        }
        let terminal = match request.metadata().get(TERMINAL_HEADER) {
            None => String::new(),
            Some(value) => value
                .to_str()
                .ok()
                .filter(|text| text.len() <= 64)
                .ok_or(AccessError::BadTerminal)?
                .to_owned(),
        };
        Ok(Caller {
            principal,
            terminal,
        })
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<Arc<Principal>, AccessError> {
        let Some(policy) = &self.policy else {
            return Ok(Arc::clone(&self.local));
        };
        // A token, when sent, decides: a wrong one is refused even over a good certificate.
        if let Some(value) = request.metadata().get("authorization") {
            let token = value
                .to_str()
                .ok()
                .and_then(|text| text.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    AccessError::Unauthenticated(
                        "authorization: expected \"Bearer <token>\"".into(),
                    )
                })?;
            return policy
                .by_token
                .get(&TokenDigest::of(token.trim()))
                .cloned()
                .ok_or_else(|| {
                    AccessError::Unauthenticated(
                        "authorization: the bearer token is not known".into(),
                    )
                });
        }
        let Some(chain) = request.peer_certs() else {
            return Err(AccessError::Unauthenticated(
                "no credentials: present a client certificate, or send authorization: Bearer <token>".into(),
            ));
        };
        let names = chain
            .first()
            .map(|leaf| certificate_names(leaf.as_ref()))
            .unwrap_or_default();
        names
            .iter()
            .find_map(|name| policy.by_name.get(name))
            .cloned()
            .ok_or_else(|| {
                AccessError::Unauthenticated(format!(
                    "the client certificate names no principal of the access policy (it names {names:?})"
                ))
            })
    }

    /// Lets a call of `cost` units in, or refuses it: RESOURCE_EXHAUSTED past the caller's rate,
    /// UNAVAILABLE when the server already answers its limit of calls (shedding load at once
    /// rather than queueing it). The permit is held until the call is answered.
    pub fn admit(&self, caller: &Caller, cost: u64) -> Result<OwnedSemaphorePermit, AccessError> {
        self.pay(caller, cost)?;
        Arc::clone(&self.in_flight)
            .try_acquire_owned()
            .map_err(|_| AccessError::Overloaded(self.max_in_flight))
    }

    /// Takes `cost` units from the caller's bucket.
    fn pay(&self, caller: &Caller, cost: u64) -> Result<(), AccessError> {
        let principal = &caller.principal;
        let Some(limiter) = &principal.limiter else {
            return Ok(());
        };
        limiter.take(cost).map_err(|retry_after| {
            Activity::add(&principal.activity.rate_limited, 1);
            AccessError::RateLimited {
                principal: principal.name.clone(),
                retry_after,
            }
        })
    }

    /// For streams: waits until the caller's rate allows `cost` more units, so that a stream over
    /// its rate is slowed down (HTTP/2 flow control reaches the client) rather than ended.
    pub async fn pace(&self, caller: &Caller, cost: u64) {
        while let Err(AccessError::RateLimited { retry_after, .. }) = self.pay(caller, cost) {
            tokio::time::sleep(retry_after).await;
        }
    }
}

/// The names a certificate identifies its holder by: subject common names, then DNS names of the
/// subject alternative name. An unparsable certificate names nobody (rustls verified it already).
fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|name| name.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(alternative)) = cert.subject_alternative_name() {
        for name in &alternative.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_digests_read_back_from_hex() {
        let digest = TokenDigest::of("s3cret");
        assert_eq!(TokenDigest::from_hex(&digest.to_hex()), Some(digest));
        assert_eq!(
            digest.to_hex(),
            "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0"
        );
        assert_eq!(TokenDigest::from_hex(&"zz".repeat(32)), None);
    }

    #[test]
    fn admin_is_granted_every_role_and_others_only_their_own() {
        let principal =
            |role| Principal::new("p".into(), role, Scopes::Nationwide, Disclosure::Full, None);
        for role in [Role::Checker, Role::Reporter, Role::Auditor, Role::Admin] {
            assert!(principal(Role::Admin).grants(Needs::Role(role)));
            assert!(principal(role).grants(Needs::AnyRole));
        }
        assert!(principal(Role::Checker).grants(Needs::Role(Role::Checker)));
        assert!(!principal(Role::Checker).grants(Needs::Role(Role::Reporter)));
        assert!(!principal(Role::Reporter).grants(Needs::Role(Role::Auditor)));
        assert!(!principal(Role::Auditor).grants(Needs::Role(Role::Admin)));
    }
}
