//! Who is calling, and what they may do: principals from client certificates or bearer tokens,
//! roles and authority scopes from the access policy, per-principal rate limits, and the global
//! limit of calls in flight.
//!
//! A server without a policy is open, and only ever on loopback (see [`crate::server`]): every
//! caller is then the principal `local` with the admin role.

mod gate;
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

use crate::event::ValidEvent;
use crate::registry::{Denial, Grant, Permission, Recorder};

/// The header a checker names its branch or terminal with; it goes into the hit log.
pub const TERMINAL_HEADER: &str = "x-idguard-terminal";
/// The principal every caller is on a server without an access policy.
pub const LOCAL_PRINCIPAL: &str = "local";
/// `Watch` and `WatchHits` streams one principal may have open at once: an auditor's
/// dashboards, not thousands of abandoned tasks. `local`, everybody on an open loopback server,
/// may have [`MAX_FEEDS_OPEN`].
pub const MAX_FEEDS_PER_PRINCIPAL: usize = 16;
/// `Watch` and `WatchHits` streams open at once on a server without a policy.
const MAX_FEEDS_OPEN: usize = 1024;

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
    /// What it may write; nothing for a role other than reporter or admin.
    grant: Grant,
    limiter: Option<TokenBucket>,
    /// Its own calls in flight, from the policy's `max_in_flight`; `None`: the default share,
    /// which [`Access::new`] sets.
    pub max_in_flight: Option<usize>,
    /// Permits for its calls in flight: its share of the server, so that one principal's
    /// calls (waiting for `min_sequence`, say) never take every permit. Empty until
    /// [`Access::new`] gives it its share.
    calls: Arc<Semaphore>,
    /// Permits for its open `Watch` and `WatchHits` streams.
    feeds: Arc<Semaphore>,
    pub activity: Activity,
}

impl Principal {
    /// A principal with a fresh bucket and zeroed activity. Only a reporter or an admin keeps
    /// its grant: no other role writes.
    pub fn new(
        name: String,
        role: Role,
        grant: Grant,
        disclosure: Disclosure,
        rate: Option<Rate>,
    ) -> Self {
        let grant = match role {
            Role::Reporter | Role::Admin => grant,
            Role::Checker | Role::Auditor => Grant::nothing(),
        };
        Self {
            name,
            role,
            disclosure,
            rate,
            grant,
            limiter: rate.map(TokenBucket::new),
            max_in_flight: None,
            calls: Arc::new(Semaphore::new(0)),
            feeds: Arc::new(Semaphore::new(MAX_FEEDS_PER_PRINCIPAL)),
            activity: Activity::default(),
        }
    }

    /// Whether this principal may report events of `authority` (a division code and a suffix).
    pub fn may_report_for(&self, authority: &str) -> bool {
        self.grant.scopes.cover(authority)
    }

    /// The principal's permissions.
    pub fn permissions(&self) -> &[Permission] {
        self.grant.permissions()
    }

    /// The principal as the recorder of the events it sends.
    pub fn recorder(&self) -> Recorder {
        Recorder {
            principal: self.name.clone(),
            grant: self.grant.clone(),
        }
    }

    fn grants(&self, needs: Needs) -> bool {
        match needs {
            Needs::AnyRole => true,
            Needs::Role(role) => self.role == role || self.role == Role::Admin,
        }
    }
}

/// An authenticated, authorised call's caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    /// From [`TERMINAL_HEADER`]; empty without one.
    pub terminal: String,
    /// The family of calls this one counts against.
    pool: Pool,
}

/// The families of calls with permits of their own: reporters retrying through a NATS outage, or
/// auditors reading histories, never take the permits checks need, nor the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Checks,
    Others,
}

impl Pool {
    fn of(needs: Needs) -> Self {
        match needs {
            Needs::AnyRole | Needs::Role(Role::Checker) => Pool::Checks,
            Needs::Role(Role::Reporter | Role::Auditor | Role::Admin) => Pool::Others,
        }
    }
}

/// A call let in: its share of its principal's permits and of its family's, held until it is
/// answered.
#[derive(Debug)]
pub struct Admission {
    _share: OwnedSemaphorePermit,
    _work: OwnedSemaphorePermit,
}

/// A call let in by its principal's rate and share, not yet holding a permit of its family: what a
/// check holds while it waits for `min_sequence`, so that waiting costs only the caller's share.
#[derive(Debug)]
pub struct Reserved {
    share: OwnedSemaphorePermit,
    pool: Pool,
}

impl Caller {
    /// PERMISSION_DENIED unless the principal may send `event`: its authority inside the
    /// principal's scopes, and the permission its kind needs held (a withdrawal's is checked
    /// when it meets its target, by the writer).
    pub fn may_send(&self, event: &ValidEvent) -> Result<(), AccessError> {
        Ok(self.principal.grant.admits(event)?)
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
    #[error(transparent)]
    Denied(#[from] Denial),
    #[error("{TERMINAL_HEADER}: at most 64 printable ASCII characters")]
    BadTerminal,
    #[error("rate limit of principal {principal:?} reached: retry after {} ms", retry_after.as_millis())]
    RateLimited {
        principal: String,
        retry_after: Duration,
    },
    #[error("the server is answering its limit of {0} calls: retry with backoff, or another node")]
    Overloaded(usize),
    #[error(
        "principal {principal:?} already has its limit of {limit} calls in flight: wait for \
         answers before sending more"
    )]
    TooManyCalls { principal: String, limit: usize },
    #[error(
        "principal {principal:?} already has {MAX_FEEDS_PER_PRINCIPAL} Watch or WatchHits \
         streams open: close one first"
    )]
    TooManyFeeds { principal: String },
}

impl From<AccessError> for Status {
    fn from(error: AccessError) -> Self {
        let message = error.to_string();
        match error {
            AccessError::Unauthenticated(_) => Status::unauthenticated(message),
            AccessError::WrongRole { .. } | AccessError::Denied(_) => {
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
            AccessError::TooManyCalls { .. } | AccessError::TooManyFeeds { .. } => {
                Status::resource_exhausted(message)
            }
        }
    }
}

/// The gatekeeper every call goes through.
#[derive(Debug)]
pub struct Access {
    /// `None`: open, every caller is [`Access::local`].
    policy: Option<Policy>,
    local: Arc<Principal>,
    /// Permits of each [`Pool`], in its order.
    pools: [Arc<Semaphore>; 2],
    max_in_flight: usize,
}

impl Access {
    /// `policy`, or open without one; at most `max_in_flight` checks and as many other calls
    /// answered at once, and of each at most a quarter (or the policy's `max_in_flight`) from
    /// one principal.
    pub fn new(policy: Option<Policy>, max_in_flight: usize) -> Self {
        let local = Arc::new(Principal::new(
            LOCAL_PRINCIPAL.into(),
            Role::Admin,
            Grant::everything(),
            Disclosure::Full,
            None,
        ));
        // On an open server the one principal is everybody.
        local.calls.add_permits(max_in_flight);
        local
            .feeds
            .add_permits(MAX_FEEDS_OPEN - MAX_FEEDS_PER_PRINCIPAL);
        if let Some(policy) = &policy {
            let unless_set = default_share(max_in_flight);
            for principal in policy.by_name.values() {
                let share = principal.max_in_flight.unwrap_or(unless_set);
                principal.calls.add_permits(share.min(max_in_flight));
            }
        }
        Self {
            policy,
            local,
            pools: [0, 1].map(|_| Arc::new(Semaphore::new(max_in_flight))),
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
            pool: Pool::of(needs),
        })
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<Arc<Principal>, AccessError> {
        if let Some(gate::Authenticated(principal)) = request.extensions().get() {
            return Ok(Arc::clone(principal));
        }
        let certs = crate::connection::ConnectionInfo::peer_certs(request.extensions());
        self.identify(
            request.metadata().as_ref(),
            certs.as_deref().map(Vec::as_slice),
        )
    }

    /// The principal that a call's headers and its connection's client certificate chain name:
    /// what [`Access::admit_headers`] asks before any of the call's body is read.
    pub fn identify(
        &self,
        headers: &tonic::codegen::http::HeaderMap,
        certs: Option<&[tonic::transport::CertificateDer<'static>]>,
    ) -> Result<Arc<Principal>, AccessError> {
        let Some(policy) = &self.policy else {
            return Ok(Arc::clone(&self.local));
        };
        // A token, when sent, decides: a wrong one is refused even over a good certificate.
        if let Some(value) = headers.get("authorization") {
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
        let Some(chain) = certs else {
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

    /// Lets a call of `cost` units in, or refuses it: RESOURCE_EXHAUSTED past the caller's rate
    /// or its share of calls in flight, UNAVAILABLE when the server already answers its limit of
    /// calls of the kind (shedding load at once rather than queueing it). Every call costs at
    /// least one unit, an empty batch included.
    pub fn admit(&self, caller: &Caller, cost: u64) -> Result<Admission, AccessError> {
        self.reserve(caller, cost)?.start(self)
    }

    /// A permit for one more `Watch` or `WatchHits` stream of the caller, held while it is open.
    pub fn open_feed(&self, caller: &Caller) -> Result<OwnedSemaphorePermit, AccessError> {
        Arc::clone(&caller.principal.feeds)
            .try_acquire_owned()
            .map_err(|_| AccessError::TooManyFeeds {
                principal: caller.principal.name.clone(),
            })
    }

    /// The first half of [`Access::admit`]: the caller's rate and its share of calls in flight.
    pub fn reserve(&self, caller: &Caller, cost: u64) -> Result<Reserved, AccessError> {
        self.pay(caller, cost.max(1))?;
        let principal = &caller.principal;
        let share = Arc::clone(&principal.calls)
            .try_acquire_owned()
            .map_err(|_| AccessError::TooManyCalls {
                principal: principal.name.clone(),
                limit: principal
                    .max_in_flight
                    .unwrap_or(default_share(self.max_in_flight)),
            })?;
        Ok(Reserved {
            share,
            pool: caller.pool,
        })
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

impl Reserved {
    /// The second half of [`Access::admit`]: a permit of the call's family.
    pub fn start(self, access: &Access) -> Result<Admission, AccessError> {
        let work = Arc::clone(&access.pools[self.pool as usize])
            .try_acquire_owned()
            .map_err(|_| AccessError::Overloaded(access.max_in_flight))?;
        Ok(Admission {
            _share: self.share,
            _work: work,
        })
    }
}

/// A principal's calls in flight when its policy entry sets none: a quarter of the server's, so
/// that at least four principals must misbehave together to take every permit.
fn default_share(max_in_flight: usize) -> usize {
    (max_in_flight / 4).max(1)
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
        let principal = |role| {
            Principal::new(
                "p".into(),
                role,
                Grant::everything(),
                Disclosure::Full,
                None,
            )
        };
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
