//! A refusal of an authenticated admin caller is recorded with who, what and why.
//!
//! The access-log layer records every admin-listener answer of 400 and above with its request
//! id, client, path and error code (`forbidden`). It does not know the admin token, the team or
//! the reason, so a handler that refuses with 403 adds a record of its own: `kind` admin,
//! `decision` deny, `status` 403, the caller's `admin_token_id` and `team`, the `target` when
//! there is one, the same `request_id` (so the two records are found together), and a `reason`
//! of `<action> refused: <why>` (`key.update refused: a team admin may only lower a key's
//! limits: limits.requests_per_minute 1000000 is above the plan's 60 …`).

use portcullis_audit::AuditEvent;
use portcullis_store::{AuditDecision, AuditKind};
use time::OffsetDateTime;

use super::auth::AdminCaller;
use crate::error::ApiError;
use crate::state::AppState;

/// Passes `result` through; a 403 is recorded first (see the module doc). `action` names what
/// was attempted, as the allowed action would be recorded (`key.update`).
pub async fn audited<T>(
    state: &AppState,
    caller: &AdminCaller,
    action: &str,
    target: Option<&str>,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    if let Err(ApiError::Forbidden { message }) = &result {
        tracing::info!(action, target, by = %caller.token_id, why = %message, "admin action refused");
        let mut event = AuditEvent::new(OffsetDateTime::now_utc(), AuditKind::Admin, AuditDecision::Deny, 403);
        event.request_id = caller.request_id.clone();
        event.admin_token_id = Some(caller.token_id.clone());
        event.team = caller.team.clone();
        event.target = target.map(str::to_string);
        event.reason = Some(format!("{action} refused: {message}"));
        state.auditor().record(event).await;
    }
    result
}
