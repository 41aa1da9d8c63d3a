//! The access policy file: who may call, in which role, within which scopes, at what rate.
//!
//! ```toml
//! [rates.checker]                # defaults for a role; a principal's own `rate` wins
//! per_second = 20000
//! burst = 40000
//!
//! [[principal]]
//! name = "icbc-sz-0755"          # a client certificate's subject CN or a DNS SAN
//! role = "checker"
//! disclosure = "full"            # "status" (the default for checkers) or "full"
//! max_in_flight = 64             # its calls answered at once (default: a quarter of the server's)
//!
//! [[principal]]
//! name = "sz-psb-loss-reports"
//! role = "reporter"
//! scopes = ["4403"]              # division-code prefixes, or "*" for the whole country
//! permissions = ["report_loss"]  # report_loss (lost, stolen), issue (issued, revoked), cancel
//! token_sha256 = ["9f86d0..."]   # bearer tokens, only as SHA-256 hex (`idguard hash-token`)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::rate::Rate;
use super::{Disclosure, Principal, Role, TokenDigest};
use crate::registry::{Grant, Permission, Scopes};

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading the access policy {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("access policy {}: {source}", path.display())]
    Syntax {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("access policy {}: principal {principal:?}: {why}", path.display())]
    Principal {
        path: PathBuf,
        principal: String,
        why: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rates: RoleRates,
    #[serde(default, rename = "principal")]
    principals: Vec<PrincipalEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleRates {
    checker: Option<Rate>,
    reporter: Option<Rate>,
    auditor: Option<Rate>,
    admin: Option<Rate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalEntry {
    name: String,
    role: Role,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    permissions: Vec<Permission>,
    disclosure: Option<Disclosure>,
    rate: Option<Rate>,
    max_in_flight: Option<usize>,
    #[serde(default)]
    token_sha256: Vec<String>,
}

/// Rates a role gets when the policy names none: generous for a unit's normal traffic, small
/// enough that one runaway client cannot take a node (see docs/security.md).
fn default_rate(role: Role) -> Option<Rate> {
    let rate = |per_second, burst| Some(Rate { per_second, burst });
    match role {
        Role::Checker => rate(20_000.0, 40_000.0),
        Role::Reporter => rate(2_000.0, 10_000.0),
        Role::Auditor => rate(50.0, 100.0),
        Role::Admin => None,
    }
}

/// A read and checked policy.
#[derive(Debug)]
pub struct Policy {
    pub(super) by_name: HashMap<String, Arc<Principal>>,
    pub(super) by_token: HashMap<TokenDigest, Arc<Principal>>,
}

impl Policy {
    /// Reads and checks the policy file at `path`; every rule broken is an error, unknown keys
    /// included, so that a typo never silently grants or drops a permission.
    pub fn read(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|error| match error {
            ParseError::Syntax(source) => PolicyError::Syntax {
                path: path.to_owned(),
                source,
            },
            ParseError::Principal { principal, why } => PolicyError::Principal {
                path: path.to_owned(),
                principal,
                why,
            },
        })
    }

    fn parse(text: &str) -> Result<Self, ParseError> {
        let file: PolicyFile = toml::from_str(text).map_err(Box::new)?;
        let mut policy = Self {
            by_name: HashMap::new(),
            by_token: HashMap::new(),
        };
        for entry in file.principals {
            let name = entry.name.clone();
            let refuse = |why: String| ParseError::Principal {
                principal: name.clone(),
                why,
            };
            let role_rate = match entry.role {
                Role::Checker => file.rates.checker,
                Role::Reporter => file.rates.reporter,
                Role::Auditor => file.rates.auditor,
                Role::Admin => file.rates.admin,
            };
            let tokens = entry
                .token_sha256
                .iter()
                .map(|hex| {
                    TokenDigest::from_hex(hex).ok_or_else(|| {
                        refuse(format!(
                            "token_sha256: {hex:?} is not 64 hexadecimal digits"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let principal = Arc::new(principal(entry, role_rate).map_err(&refuse)?);
            for token in tokens {
                if policy
                    .by_token
                    .insert(token, Arc::clone(&principal))
                    .is_some()
                {
                    return Err(refuse(
                        "token_sha256: the same token is given to two principals".into(),
                    ));
                }
            }
            if policy.by_name.insert(name.clone(), principal).is_some() {
                return Err(refuse("name: given twice".into()));
            }
        }
        Ok(policy)
    }
}

enum ParseError {
    Syntax(Box<toml::de::Error>),
    Principal { principal: String, why: String },
}

impl From<Box<toml::de::Error>> for ParseError {
    fn from(error: Box<toml::de::Error>) -> Self {
        Self::Syntax(error)
    }
}

/// One principal from its entry, checked.
fn principal(entry: PrincipalEntry, role_rate: Option<Rate>) -> Result<Principal, String> {
    if entry.name.is_empty() || entry.name.len() > 255 {
        return Err("name: must be 1 to 255 bytes".into());
    }
    let scopes = match (entry.role, entry.scopes.is_empty()) {
        (Role::Reporter, true) => {
            return Err(
                "scopes: a reporter needs at least one division-code prefix, or \"*\"".into(),
            );
        }
        (Role::Reporter, false) => scopes(entry.scopes)?,
        (Role::Admin, true) => Scopes::Nationwide,
        (_, true) => Scopes::Prefixes(Vec::new()),
        (_, false) => return Err("scopes: only a reporter has scopes".into()),
    };
    let grant = match (entry.role, entry.permissions.is_empty()) {
        (Role::Reporter, true) => {
            return Err(
                "permissions: a reporter needs at least one of report_loss (police \
                 loss-report units), issue (issuing organs), cancel (household-registration organs)"
                    .into(),
            );
        }
        (Role::Reporter, false) => Grant::new(scopes, entry.permissions),
        (Role::Admin, true) => Grant::everything(),
        (_, true) => Grant::nothing(),
        (_, false) => return Err("permissions: only a reporter has permissions".into()),
    };
    let rate = entry
        .rate
        .or(role_rate)
        .or_else(|| default_rate(entry.role));
    if let Some(rate) = rate {
        rate.check()?;
    }
    let disclosure = entry.disclosure.unwrap_or(match entry.role {
        Role::Checker => Disclosure::Status,
        _ => Disclosure::Full,
    });
    if entry.max_in_flight == Some(0) {
        return Err("max_in_flight: must be at least 1".into());
    }
    let mut principal = Principal::new(entry.name, entry.role, grant, disclosure, rate);
    principal.max_in_flight = entry.max_in_flight;
    Ok(principal)
}

fn scopes(prefixes: Vec<String>) -> Result<Scopes, String> {
    if prefixes.iter().any(|prefix| prefix == "*") {
        return Ok(Scopes::Nationwide);
    }
    for prefix in &prefixes {
        if !(2..=6).contains(&prefix.len()) || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "scopes: {prefix:?} is not a division-code prefix (2 to 6 digits) or \"*\""
            ));
        }
    }
    Ok(Scopes::Prefixes(prefixes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(text: &str) -> String {
        match Policy::parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(ParseError::Syntax(error)) => error.to_string(),
            Err(ParseError::Principal { principal, why }) => format!("{principal}: {why}"),
        }
    }

    #[test]
    fn a_policy_gives_each_principal_its_role_scopes_rate_and_disclosure() {
        let policy = Policy::parse(&format!(
            r#"
            [rates.checker]
            per_second = 100
            burst = 200

            [[principal]]
            name = "hotel"
            role = "checker"

            [[principal]]
            name = "bank"
            role = "checker"
            disclosure = "full"
            rate = {{ per_second = 5, burst = 5 }}

            [[principal]]
            name = "sz-police"
            role = "reporter"
            scopes = ["4403", "440104"]
            permissions = ["report_loss", "issue"]
            token_sha256 = ["{}"]
            "#,
            "ab".repeat(32)
        ))
        .unwrap_or_else(|_| panic!("refused"));
        let hotel = &policy.by_name["hotel"];
        assert_eq!(hotel.disclosure, Disclosure::Status);
        assert_eq!(
            hotel.rate,
            Some(Rate {
                per_second: 100.0,
                burst: 200.0
            })
        );
        let bank = &policy.by_name["bank"];
        assert_eq!(bank.disclosure, Disclosure::Full);
        assert_eq!(
            bank.rate,
            Some(Rate {
                per_second: 5.0,
                burst: 5.0
            })
        );
        let police = &policy.by_token[&TokenDigest::from_hex(&"ab".repeat(32)).unwrap()];
        assert_eq!(police.name, "sz-police");
        assert!(police.may_report_for("440305"));
        assert!(police.may_report_for("440104SZ-PSB"));
        assert!(!police.may_report_for("440203"));
        assert!(!police.may_report_for("110105"));
        assert!(!hotel.may_report_for("440305"));
        assert_eq!(
            police.permissions(),
            [Permission::ReportLoss, Permission::Issue]
        );
        assert!(hotel.permissions().is_empty());
    }

    #[test]
    fn mistakes_in_a_policy_are_refused_naming_the_principal_and_field() {
        assert!(
            refusal("[[principal]]\nname = \"a\"\nrole = \"checker\"\ncolour = 1")
                .contains("unknown field `colour`")
        );
        assert!(
            refusal("[[principal]]\nname = \"a\"\nrole = \"superuser\"")
                .contains("unknown variant `superuser`")
        );
        assert_eq!(
            refusal("[[principal]]\nname = \"p\"\nrole = \"reporter\""),
            "p: scopes: a reporter needs at least one division-code prefix, or \"*\""
        );
        assert_eq!(
            refusal("[[principal]]\nname = \"p\"\nrole = \"reporter\"\nscopes = [\"44x\"]"),
            "p: scopes: \"44x\" is not a division-code prefix (2 to 6 digits) or \"*\""
        );
        assert_eq!(
            refusal("[[principal]]\nname = \"c\"\nrole = \"checker\"\nscopes = [\"44\"]"),
            "c: scopes: only a reporter has scopes"
        );
        assert_eq!(
            refusal("[[principal]]\nname = \"c\"\nrole = \"checker\"\ntoken_sha256 = [\"beef\"]"),
            "c: token_sha256: \"beef\" is not 64 hexadecimal digits"
        );
        assert_eq!(
            refusal(
                "[[principal]]\nname = \"c\"\nrole = \"checker\"\n[[principal]]\nname = \"c\"\nrole = \"auditor\""
            ),
            "c: name: given twice"
        );
        for (rate, why) in [
            (
                "per_second = 0, burst = 1",
                "per_second must be from 0.01 to 1e12, got 0.0",
            ),
            (
                "per_second = 1e-300, burst = 1",
                "per_second must be from 0.01 to 1e12, got 1e-300",
            ),
            (
                "per_second = nan, burst = 1",
                "per_second must be from 0.01 to 1e12, got NaN",
            ),
            (
                "per_second = 5, burst = 0.5",
                "burst must be from 1 to 1e12, got 0.5",
            ),
            (
                "per_second = 5, burst = inf",
                "burst must be from 1 to 1e12, got inf",
            ),
        ] {
            assert_eq!(
                refusal(&format!(
                    "[[principal]]\nname = \"c\"\nrole = \"checker\"\nrate = {{ {rate} }}"
                )),
                format!("c: rate: {why}")
            );
        }
        assert_eq!(
            refusal("[[principal]]\nname = \"p\"\nrole = \"reporter\"\nscopes = [\"44\"]"),
            "p: permissions: a reporter needs at least one of report_loss (police loss-report \
             units), issue (issuing organs), cancel (household-registration organs)"
        );
        assert!(
            refusal(
                "[[principal]]\nname = \"p\"\nrole = \"reporter\"\nscopes = [\"44\"]\npermissions = [\"revoke\"]"
            )
            .contains("unknown variant `revoke`")
        );
        assert_eq!(
            refusal("[[principal]]\nname = \"c\"\nrole = \"checker\"\npermissions = [\"issue\"]"),
            "c: permissions: only a reporter has permissions"
        );
    }
}
