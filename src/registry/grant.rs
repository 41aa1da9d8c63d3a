//! What a reporter may write: the division codes it reports for (its scopes) and the kinds of
//! event its organ is responsible for (its permissions).
//!
//! A grant is recorded with every withdrawal and travels with every event on the cluster stream,
//! because a withdrawal may arrive before the event it names: whether it undoes that event is
//! decided when the two meet, by the writer, the bulk import and every cluster follower alike, and
//! it must be decided from what the withdrawer was allowed *when its withdrawal was accepted*
//! (`DOMAIN.md` §3: only a competent organ withdraws a report).

use crate::event::{Kind, ValidEvent};
use crate::proto::v1 as pb;

/// The division codes a reporter may report for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scopes {
    Nationwide,
    /// Division-code prefixes such as `4403` (Shenzhen).
    Prefixes(Vec<String>),
}

impl Scopes {
    /// Whether an event of `authority` (a division code and a unit suffix) is inside.
    pub fn cover(&self, authority: &str) -> bool {
        match self {
            Scopes::Nationwide => true,
            Scopes::Prefixes(prefixes) => {
                prefixes.iter().any(|prefix| authority.starts_with(prefix))
            }
        }
    }

    /// The scopes as the policy spells them, for messages to their holder.
    pub fn describe(&self) -> String {
        match self {
            Scopes::Nationwide => "*".into(),
            Scopes::Prefixes(prefixes) => prefixes.join(", "),
        }
    }
}

/// A family of events one kind of organ reports (`DOMAIN.md` §3, "source of the record").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Police loss-report units: `lost` and `stolen`, for a card of any province.
    ReportLoss,
    /// Issuing public security organs: `issued` and `revoked`.
    Issue,
    /// Household-registration organs: `cancelled`.
    Cancel,
}

impl Permission {
    const ALL: [Permission; 3] = [
        Permission::ReportLoss,
        Permission::Issue,
        Permission::Cancel,
    ];

    /// The permission's name, as the policy file and refusals spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ReportLoss => "report_loss",
            Permission::Issue => "issue",
            Permission::Cancel => "cancel",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The permission an event of this kind needs; a withdrawal needs the one of the event it
    /// withdraws, known only once the two meet.
    pub fn needed_for(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Lost | Kind::Stolen => Some(Permission::ReportLoss),
            Kind::Issued | Kind::Revoked => Some(Permission::Issue),
            Kind::Cancelled => Some(Permission::Cancel),
            Kind::Withdrawn => None,
        }
    }
}

/// Why a grant does not cover an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("authority: {authority:?} is outside this principal's scopes ({scopes})")]
    OutOfScope { authority: String, scopes: String },
    #[error("{kind} events need the {permission} permission; this principal holds {held}")]
    MissingPermission {
        kind: &'static str,
        permission: &'static str,
        held: String,
    },
    /// A withdrawal's target outside the withdrawer's grant. The target's authority and kind are
    /// another jurisdiction's to know, so the message names neither.
    #[error(
        "withdrawn.withdrawn_report_id: the event it names was reported outside this principal's \
         scopes or permissions"
    )]
    TargetOutside,
}

/// A reporter's scopes and permissions, as recorded with its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scopes: Scopes,
    permissions: Vec<Permission>,
}

impl Grant {
    /// A grant of `permissions` within `scopes`.
    pub fn new(scopes: Scopes, mut permissions: Vec<Permission>) -> Self {
        permissions.sort_by_key(|p| *p as u8);
        permissions.dedup();
        Self {
            scopes,
            permissions,
        }
    }

    /// Every permission nationwide: an administrator, a server without a policy, the operator's
    /// bulk import.
    pub fn everything() -> Self {
        Self::new(Scopes::Nationwide, Permission::ALL.to_vec())
    }

    /// Nothing: what an event recorded without a grant (a stream message idguard did not write)
    /// is held to, so that it can never undo anything.
    pub fn nothing() -> Self {
        Self::new(Scopes::Prefixes(Vec::new()), Vec::new())
    }

    pub fn permissions(&self) -> &[Permission] {
        &self.permissions
    }

    /// The permissions, as the policy spells them, for messages to their holder.
    pub fn describe_permissions(&self) -> String {
        if self.permissions.is_empty() {
            return "none".into();
        }
        let names: Vec<_> = self.permissions.iter().map(|p| p.as_str()).collect();
        names.join(", ")
    }

    /// Whether this grant lets its holder send `event` (before it reaches the registry): its
    /// authority inside the scopes and, but for a withdrawal, its kind's permission.
    pub fn admits(&self, event: &ValidEvent) -> Result<(), Denial> {
        let authority = &event.event.authority;
        if !self.scopes.cover(authority) {
            return Err(Denial::OutOfScope {
                authority: authority.clone(),
                scopes: self.scopes.describe(),
            });
        }
        match Permission::needed_for(event.event.kind.kind()) {
            Some(permission) if !self.permissions.contains(&permission) => {
                Err(Denial::MissingPermission {
                    kind: event.event.kind.name(),
                    permission: permission.as_str(),
                    held: self.describe_permissions(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether a withdrawal accepted under this grant may undo a recorded event of `kind` by
    /// `authority`: the authority inside the scopes and the kind's permission held.
    pub fn may_withdraw(&self, authority: &str, kind: Kind) -> bool {
        self.scopes.cover(authority)
            && Permission::needed_for(kind)
                .is_some_and(|permission| self.permissions.contains(&permission))
    }

    /// The grant as recorded in the log and on the cluster stream.
    pub fn to_wire(&self) -> pb::Grant {
        pb::Grant {
            scopes: match &self.scopes {
                Scopes::Nationwide => vec!["*".into()],
                Scopes::Prefixes(prefixes) => prefixes.clone(),
            },
            permissions: self
                .permissions
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
        }
    }

    /// A recorded grant; a permission this build does not know grants nothing, and no grant at
    /// all is [`Grant::nothing`].
    pub fn from_wire(wire: Option<&pb::Grant>) -> Self {
        let Some(wire) = wire else {
            return Self::nothing();
        };
        let scopes = if wire.scopes.iter().any(|scope| scope == "*") {
            Scopes::Nationwide
        } else {
            Scopes::Prefixes(wire.scopes.clone())
        };
        let permissions = wire
            .permissions
            .iter()
            .filter_map(|name| Permission::from_name(name))
            .collect();
        Self::new(scopes, permissions)
    }
}

/// Who recorded an event: the principal's name (`recorded_by`) and what it was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorder {
    pub principal: String,
    pub grant: Grant,
}

impl Recorder {
    /// The operator's bulk import, or a server without a policy, under `principal`.
    pub fn trusted(principal: &str) -> Self {
        Self {
            principal: principal.to_owned(),
            grant: Grant::everything(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_withdrawal_undoes_only_events_inside_its_grant() {
        let shenzhen_police = Grant::new(
            Scopes::Prefixes(vec!["4403".into()]),
            vec![Permission::ReportLoss],
        );
        assert!(shenzhen_police.may_withdraw("440305", Kind::Lost));
        assert!(shenzhen_police.may_withdraw("440305", Kind::Stolen));
        assert!(!shenzhen_police.may_withdraw("110105", Kind::Lost));
        assert!(!shenzhen_police.may_withdraw("440305", Kind::Issued));
        assert!(!shenzhen_police.may_withdraw("440305", Kind::Withdrawn));
        assert!(Grant::everything().may_withdraw("110105", Kind::Issued));
        assert!(!Grant::nothing().may_withdraw("110105", Kind::Issued));
    }

    #[test]
    fn a_grant_reads_back_from_its_recorded_form() {
        let grant = Grant::new(
            Scopes::Prefixes(vec!["4403".into(), "110105".into()]),
            vec![
                Permission::Cancel,
                Permission::ReportLoss,
                Permission::Cancel,
            ],
        );
        assert_eq!(Grant::from_wire(Some(&grant.to_wire())), grant);
        assert_eq!(
            Grant::from_wire(Some(&Grant::everything().to_wire())),
            Grant::everything()
        );
        assert_eq!(Grant::from_wire(None), Grant::nothing());
        let unknown = pb::Grant {
            scopes: vec!["*".into()],
            permissions: vec!["superuser".into()],
        };
        assert!(Grant::from_wire(Some(&unknown)).permissions().is_empty());
    }
}
