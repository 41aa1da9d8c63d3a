//! `idguard.v1.Admin`: operator commands.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status};

use crate::access::{Access, Needs, Role};
use crate::proto::v1::{self as pb, admin_server::Admin};

/// The `Admin` service.
pub struct AdminService {
    access: Arc<Access>,
}

impl AdminService {
    pub fn new(access: Arc<Access>) -> Self {
        Self { access }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_callers(
        &self,
        request: Request<pb::ListCallersRequest>,
    ) -> Result<Response<pb::ListCallersResponse>, Status> {
        self.access.authorize(&request, Needs::Role(Role::Admin))?;
        let callers = self
            .access
            .principals()
            .iter()
            .map(|principal| {
                let activity = &principal.activity;
                pb::CallerActivity {
                    principal: principal.name.clone(),
                    role: principal.role.as_str().into(),
                    checks_valid: activity.checks_valid.load(Ordering::Relaxed),
                    checks_invalid: activity.checks_invalid.load(Ordering::Relaxed),
                    checks_malformed: activity.checks_malformed.load(Ordering::Relaxed),
                    hits: activity.hits.load(Ordering::Relaxed),
                    rate_limited: activity.rate_limited.load(Ordering::Relaxed),
                }
            })
            .collect();
        Ok(Response::new(pb::ListCallersResponse { callers }))
    }
}
