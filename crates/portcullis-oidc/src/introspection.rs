//! RFC 7662 introspection of opaque tokens: a form POST with the gateway's client credentials;
//! only an `active: true` answer that matches the issuer and audience makes an identity.

use std::time::Duration;

use portcullis_auth::ExternalIdentity;
use serde_json::{Map, Value};

use crate::claims::{self, MappedField};
use crate::issuer::Issuer;
use crate::refusal::Refusal;

/// Asks `issuer` about `token`; an active answer comes with how long it may be cached.
pub async fn introspect(
    issuer: &Issuer,
    token: &str,
    now: i64,
    trace: &mut Vec<MappedField>,
) -> Result<(ExternalIdentity, Duration), Refusal> {
    let Some(settings) = &issuer.config.introspection else { return Err(Refusal::UnknownIssuer) };
    let unavailable = |error: &dyn std::fmt::Display| {
        issuer.counters.introspection_error.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        issuer.introspection_result(false);
        tracing::warn!(issuer = issuer.name(), error = %error, "token introspection failed");
        Refusal::Unavailable("the introspection endpoint did not answer")
    };
    let endpoint = issuer.introspection_endpoint().await.map_err(|error| unavailable(&error))?;
    let body = crate::fetch::post_form(
        issuer.client(),
        &endpoint,
        &settings.client_id,
        settings.client_secret.expose(),
        &[("token", token), ("token_type_hint", "access_token")],
    )
    .await
    .map_err(|error| unavailable(&error))?;
    let answer: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(answer)) => answer,
        _ => return Err(unavailable(&"the answer is not a JSON object")),
    };
    issuer.introspection_result(true);
    let counted = |active: bool| {
        let counter =
            if active { &issuer.counters.introspection_active } else { &issuer.counters.introspection_inactive };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let result = judge(issuer, token, answer, now, trace, settings.cache_ttl.0);
    counted(result.is_ok());
    result
}

fn judge(
    issuer: &Issuer,
    token: &str,
    mut answer: Map<String, Value>,
    now: i64,
    trace: &mut Vec<MappedField>,
    cache_ttl: Duration,
) -> Result<(ExternalIdentity, Duration), Refusal> {
    if answer.get("active") != Some(&Value::Bool(true)) {
        return Err(Refusal::Inactive);
    }
    let exp = match answer.get("exp") {
        None => None,
        Some(Value::Number(exp)) => {
            exp.as_i64().map(Some).ok_or(Refusal::InvalidClaim { claim: "exp".into(), problem: "is out of range" })?
        }
        Some(_) => {
            return Err(Refusal::InvalidClaim {
                claim: "exp".into(),
                problem: "must be a number (seconds since the epoch)",
            });
        }
    };
    if exp.is_some_and(|exp| exp <= now) {
        return Err(Refusal::Expired);
    }
    match answer.get("iss") {
        None => {}
        Some(Value::String(iss)) if *iss == issuer.config.issuer => {}
        Some(_) => return Err(Refusal::UnknownIssuer),
    }
    let audiences = issuer.config.audience.values();
    let audience_ok = match answer.get("aud") {
        None => true,
        Some(Value::String(aud)) => audiences.contains(aud),
        Some(Value::Array(auds)) => {
            auds.iter().any(|aud| aud.as_str().is_some_and(|aud| audiences.iter().any(|want| want == aud)))
        }
        Some(_) => false,
    };
    if !audience_ok {
        return Err(Refusal::WrongAudience);
    }
    // A client-credentials token may have no `sub`; its client is then the subject.
    if !answer.contains_key("sub")
        && let Some(client) = answer.get("client_id").cloned()
    {
        answer.insert("sub".into(), client);
    }
    let identity = claims::identity(&issuer.config, &answer, token, exp, trace)?;
    let remaining = exp.map_or(cache_ttl, |exp| Duration::from_secs(u64::try_from(exp - now).unwrap_or(0)));
    Ok((identity, cache_ttl.min(remaining)))
}
