//! The query string of the audit routes, checked and turned into the store's filter, with the
//! confinement of a team admin to its own team.

use portcullis_audit::{AuditDecision, AuditFilter, AuditKind};
use portcullis_types::admin::Role;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::admin::auth::AdminCaller;
use crate::admin::validate;
use crate::error::ApiError;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// The query string of all three routes; each reads the parameters it knows. Everything is text
/// here so that a bad value is a 400 naming its parameter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// A duration back from now (`24h`) or an RFC 3339 time; inclusive.
    pub(super) since: Option<String>,
    /// An RFC 3339 time; exclusive.
    pub(super) until: Option<String>,
    pub(super) key: Option<String>,
    /// A token or certificate caller's subject.
    pub(super) subject: Option<String>,
    /// A token or certificate caller's issuer.
    pub(super) issuer: Option<String>,
    /// The gateway that asked the authorizer.
    pub(super) gateway: Option<String>,
    pub(super) team: Option<String>,
    pub(super) model: Option<String>,
    pub(super) status: Option<String>,
    pub(super) decision: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) request_id: Option<String>,
    pub(super) node: Option<String>,
    pub(super) limit: Option<String>,
    pub(super) cursor: Option<String>,
    /// Export only: `jsonl` (default) or `csv`.
    pub(super) format: Option<String>,
}

/// The store filter for a request, or `None` when the caller may see nothing it asked for.
/// Every parameter is checked first, so a bad one is a 400 whoever asks.
pub(super) fn audit_filter(
    caller: &AdminCaller,
    params: &AuditParams,
    now: OffsetDateTime,
) -> Result<Option<AuditFilter>, ApiError> {
    let since = params.since.as_deref().map(|text| validate::since(text, now)).transpose()?;
    let until = params
        .until
        .as_deref()
        .map(|text| {
            validate::parse_time(text).ok_or_else(|| {
                ApiError::bad_request(
                    "until must be an RFC 3339 time no later than 9999-12-31T23:59:59Z",
                    Some("until"),
                )
            })
        })
        .transpose()?;
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        return Err(ApiError::bad_request("since must be before until", Some("since")));
    }
    let status =
        params
            .status
            .as_deref()
            .map(|text| {
                text.trim().parse::<u16>().ok().filter(|status| (100..=599).contains(status)).ok_or_else(|| {
                    ApiError::bad_request("status must be an HTTP status code (100-599)", Some("status"))
                })
            })
            .transpose()?;
    let decision = params
        .decision
        .as_deref()
        .map(|text| {
            AuditDecision::from_name(text)
                .ok_or_else(|| ApiError::bad_request("decision must be one of allow, deny, error", Some("decision")))
        })
        .transpose()?;
    let kind = params
        .kind
        .as_deref()
        .map(|text| {
            AuditKind::from_name(text).ok_or_else(|| {
                let kinds = AuditKind::ALL.map(AuditKind::name).join(", ");
                ApiError::bad_request(format!("kind must be one of {kinds}"), Some("kind"))
            })
        })
        .transpose()?;
    let mut team = params.team.as_deref().map(|team| validate::team_name(team, "team")).transpose()?;
    let filter = AuditFilter {
        since,
        until,
        node: params.node.as_deref().map(|node| validate::filter(node, "node")).transpose()?,
        key_id: params.key.as_deref().map(|key| validate::filter(key, "key")).transpose()?,
        subject: params.subject.as_deref().map(|subject| validate::filter(subject, "subject")).transpose()?,
        issuer: params.issuer.as_deref().map(|issuer| validate::filter(issuer, "issuer")).transpose()?,
        gateway: params.gateway.as_deref().map(|gateway| validate::filter(gateway, "gateway")).transpose()?,
        team: None,
        model: params.model.as_deref().map(|model| validate::filter(model, "model")).transpose()?,
        status,
        decision,
        kind,
        request_id: params.request_id.as_deref().map(|id| validate::filter(id, "request_id")).transpose()?,
    };
    if caller.role == Role::TeamAdmin {
        match (&caller.team, &team) {
            // Another team's records are answered as if there were none.
            (Some(own), Some(asked)) if own != asked => return Ok(None),
            (Some(own), _) => team = Some(own.clone()),
            (None, _) => return Ok(None),
        }
    }
    Ok(Some(AuditFilter { team, ..filter }))
}

pub(super) fn limit(text: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = text else {
        return Ok(DEFAULT_LIMIT);
    };
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
        .ok_or_else(|| ApiError::bad_request(format!("limit must be 1-{MAX_LIMIT}"), Some("limit")))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::admin::test_support::{self, admin, caller, param_of};

    const NOW: OffsetDateTime = datetime!(2025-06-10 12:30 UTC);

    fn ask(pairs: &[(&str, &str)]) -> AuditParams {
        test_support::ask("/admin/v1/audit", pairs)
    }

    #[test]
    fn no_parameters_read_everything() {
        assert_eq!(audit_filter(&admin(), &ask(&[]), NOW).unwrap(), Some(AuditFilter::default()));
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
    }

    #[test]
    fn every_filter_is_parsed() {
        let pairs = [
            ("since", "24h"),
            ("until", "2025-06-10T14:00:00+02:00"),
            ("key", "key_1"),
            ("subject", "svc-ingest"),
            ("issuer", "https://idp.example"),
            ("gateway", "nginx"),
            ("team", "acme"),
            ("model", "smollm"),
            ("status", "429"),
            ("decision", "deny"),
            ("kind", "security"),
            ("request_id", "req_1"),
            ("node", "gw:1"),
        ];
        let filter = audit_filter(&admin(), &ask(&pairs), NOW).unwrap().unwrap();
        let expected = AuditFilter {
            since: Some(NOW - time::Duration::hours(24)),
            until: Some(datetime!(2025-06-10 12:00 UTC)),
            node: Some("gw:1".into()),
            key_id: Some("key_1".into()),
            subject: Some("svc-ingest".into()),
            issuer: Some("https://idp.example".into()),
            gateway: Some("nginx".into()),
            team: Some("acme".into()),
            model: Some("smollm".into()),
            status: Some(429),
            decision: Some(AuditDecision::Deny),
            kind: Some(AuditKind::Security),
            request_id: Some("req_1".into()),
        };
        assert_eq!(filter, expected);
        let since = audit_filter(&admin(), &ask(&[("since", "2025-06-01T00:00:00Z")]), NOW).unwrap().unwrap();
        assert_eq!(since.since, Some(datetime!(2025-06-01 00:00 UTC)));
        for (decision, parsed) in [("allow", AuditDecision::Allow), ("error", AuditDecision::Error)] {
            let filter = audit_filter(&admin(), &ask(&[("decision", decision)]), NOW).unwrap().unwrap();
            assert_eq!(filter.decision, Some(parsed));
        }
        for kind in AuditKind::ALL {
            let filter = audit_filter(&admin(), &ask(&[("kind", kind.name())]), NOW).unwrap().unwrap();
            assert_eq!(filter.kind, Some(kind));
        }
        assert_eq!(limit(Some("1000")).unwrap(), 1000);
    }

    #[test]
    fn bad_parameters_are_400s_naming_the_parameter() {
        let bad: [(&[(&str, &str)], &str); 17] = [
            (&[("since", "yesterday")], "since"),
            (&[("since", "-1d")], "since"),
            (&[("until", "24h")], "until"),
            (&[("since", "2025-06-11T00:00:00Z"), ("until", "2025-06-10T00:00:00Z")], "since"),
            (&[("status", "abc")], "status"),
            (&[("status", "99")], "status"),
            (&[("decision", "maybe")], "decision"),
            (&[("kind", "Request")], "kind"),
            (&[("team", "a/b")], "team"),
            (&[("key", "")], "key"),
            (&[("subject", "")], "subject"),
            (&[("issuer", "a%1Bb")], "issuer"),
            (&[("gateway", "")], "gateway"),
            (&[("kind", "auth")], "kind"),
            (&[("model", "m%1B")], "model"),
            (&[("request_id", &"r".repeat(129))], "request_id"),
            (&[("node", "")], "node"),
        ];
        for (pairs, param) in bad {
            let error = audit_filter(&admin(), &ask(pairs), NOW).unwrap_err();
            assert_eq!(param_of(error), Some(param), "{pairs:?}");
        }
        for bad in ["0", "1001", "-1", "ten"] {
            assert_eq!(param_of(limit(Some(bad)).unwrap_err()), Some("limit"), "{bad}");
        }
        // A team admin gets the same 400s, not an empty answer.
        let acme = caller(Role::TeamAdmin, Some("acme"));
        assert_eq!(param_of(audit_filter(&acme, &ask(&[("status", "x")]), NOW).unwrap_err()), Some("status"));
    }

    #[test]
    fn a_team_admin_is_confined_to_its_team() {
        let acme = caller(Role::TeamAdmin, Some("acme"));
        let filter = audit_filter(&acme, &ask(&[("key", "key_x")]), NOW).unwrap().unwrap();
        assert_eq!((filter.team.as_deref(), filter.key_id.as_deref()), (Some("acme"), Some("key_x")));
        let filter = audit_filter(&acme, &ask(&[("team", "acme")]), NOW).unwrap().unwrap();
        assert_eq!(filter.team.as_deref(), Some("acme"));
        assert_eq!(audit_filter(&acme, &ask(&[("team", "globex")]), NOW).unwrap(), None, "nothing, not an error");
        assert_eq!(audit_filter(&caller(Role::TeamAdmin, None), &ask(&[]), NOW).unwrap(), None);
        for role in [Role::Admin, Role::Auditor] {
            let filter = audit_filter(&caller(role, None), &ask(&[("team", "globex")]), NOW).unwrap().unwrap();
            assert_eq!(filter.team.as_deref(), Some("globex"));
        }
    }
}
