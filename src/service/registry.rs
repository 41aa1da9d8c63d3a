//! `idguard.v1.Registry`: events from police loss-report systems and issuing organs, and the
//! history of a number for auditors.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{check_response, invalid_argument, now};
use crate::card::{
    Card, FieldError, PresentedCard, china_today, format_date, parse_registrable_number,
};
use crate::event::validate_event;
use crate::proto::v1::{self as pb, registry_server::Registry};
use crate::registry::verdict;
use crate::store::Store;

/// The `Registry` service over a store.
pub struct RegistryService {
    store: Arc<Store>,
}

impl RegistryService {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn apply(
        &self,
        request: Request<pb::RegistryEvent>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let valid = validate_event(request.get_ref(), now()).map_err(invalid_argument)?;
        let report_id = valid.event.report_id.as_str().to_owned();
        let applied = self.store.apply(valid).await?;
        tracing::info!(
            sequence = applied.sequence,
            duplicate = applied.duplicate,
            "event applied"
        );
        Ok(Response::new(pb::ApplyResponse {
            report_id,
            sequence: applied.sequence,
            duplicate: applied.duplicate,
        }))
    }

    async fn get_record(
        &self,
        request: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::CitizenRecord>, Status> {
        let today = china_today(now());
        let number = parse_registrable_number(&request.get_ref().id_number, today)
            .map_err(|rule| invalid_argument(FieldError::new("id_number", rule)))?;
        let not_found = || Status::not_found(format!("no record for id_number {number}"));
        if !self.store.may_have_record(number) {
            return Err(not_found());
        }
        let sequence = self.store.sequence();
        let found = self
            .store
            .read(move |store| {
                let Some(state) = store.citizens(&[number])?.pop().flatten() else {
                    return Ok(None);
                };
                let sequences: Vec<u64> = state.entries().iter().map(|e| e.sequence).collect();
                let events = store.events(&sequences)?;
                Ok(Some((state, events)))
            })
            .await?;
        let (state, events) = found.ok_or_else(not_found)?;
        let cards = state
            .known_cards()
            .into_iter()
            .map(|(issued, expiry)| {
                let card = Card {
                    number,
                    issued,
                    expiry,
                };
                let verdict = verdict(&PresentedCard::Current(card), Some(&state), today);
                pb::CardRecord {
                    card: Some(pb::CardRef {
                        id_number: number.to_string(),
                        issue_date: format_date(issued),
                        expiry_date: expiry.to_string(),
                    }),
                    verdict: Some(check_response(verdict, sequence)),
                }
            })
            .collect();
        Ok(Response::new(pb::CitizenRecord {
            id_number: number.to_string(),
            cards,
            events,
            sequence,
        }))
    }
}
