//! A refusal of an authenticated admin caller is recorded with who, what and why: the request's
//! one audit record (written by the access log for every admin answer of 400 and above) gets the
//! caller's `admin_token_id` and `team`, the `target` when there is one, and a `reason` of
//! `<action> refused: <why>` (`key.update refused: a team admin may only lower a key's limits:
//! limits.requests_per_minute 1000000 is above the plan's 60 …`) instead of the bare error code.

use super::auth::AdminCaller;
use crate::error::ApiError;

/// Passes `result` through; a 403 is noted on the request's record first (see the module doc).
/// `action` names what was attempted, as the allowed action would be recorded (`key.update`).
pub fn audited<T>(
    caller: &AdminCaller,
    action: &str,
    target: Option<&str>,
    result: Result<T, ApiError>,
) -> Result<T, ApiError> {
    if let (Err(ApiError::Forbidden { message }), Some(exchange)) = (&result, &caller.exchange) {
        tracing::info!(action, target, by = %caller.token_id, why = %message, "admin action refused");
        exchange.note(|info| {
            info.admin_token_id = Some(caller.token_id.clone());
            info.team.clone_from(&caller.team);
            info.target = target.map(str::to_string);
            info.reason = Some(format!("{action} refused: {message}"));
        });
    }
    result
}
