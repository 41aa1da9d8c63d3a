//! `idguard.v1.Admin`: operator commands.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tonic::{Request, Response, Status};

use crate::access::{Access, Needs, Role};
use crate::proto::v1::{self as pb, admin_server::Admin};
use crate::store::Store;

/// The `Admin` service.
pub struct AdminService {
    store: Arc<Store>,
    access: Arc<Access>,
}

impl AdminService {
    /// The service over `store`, open to admins of `access` only.
    pub fn new(store: Arc<Store>, access: Arc<Access>) -> Self {
        Self { store, access }
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

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        let caller = self.access.authorize(&request, Needs::Role(Role::Admin))?;
        let to_dir = request.into_inner().to_dir;
        let path = std::path::PathBuf::from(&to_dir);
        if !path.is_absolute() {
            return Err(Status::invalid_argument(format!(
                "to_dir: must be an absolute path on the server's host, got {to_dir:?}"
            )));
        }
        if path.exists() {
            return Err(Status::already_exists(format!(
                "to_dir: {to_dir} already exists; a backup goes into a new directory"
            )));
        }
        let sequence = self.store.read(move |store| store.backup(&path)).await?;
        tracing::info!(principal = %caller.principal.name, %to_dir, sequence, "backup written");
        Ok(Response::new(pb::BackupResponse { to_dir, sequence }))
    }
}
