//! `portcullis auth explain`: `POST /admin/v1/auth/explain` — what the gateway makes of an API
//! key, a token or a client certificate, without calling a model.

use std::io::Read;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use portcullis_types::Secret;
use portcullis_types::admin::{AuthExplanation, ClaimMapping, CredentialKind, MappingSource, TierSource};

use super::client::AdminClient;
use super::output::{self, NONE, Render, fmt_list, fmt_text, fmt_time};

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Explain a credential: accepted or exactly why not, the principal it becomes and the limits
    /// that apply. Admin tokens only. The credential is sent to the admin API, never printed.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ExplainArgs {
    /// The API key or token (visible to other users in the process list: prefer
    /// --credential-stdin).
    #[arg(value_name = "CREDENTIAL")]
    credential: Option<String>,
    /// Read the credential from standard input (surrounding whitespace is ignored).
    #[arg(long)]
    credential_stdin: bool,
    /// Explain a client certificate instead: a PEM file, the client's certificate first, then any
    /// intermediates it sends.
    #[arg(long, value_name = "PEM_FILE")]
    certificate: Option<std::path::PathBuf>,
}

impl ExplainArgs {
    /// The request body: the credential, or the certificate file's text.
    fn body(self) -> anyhow::Result<serde_json::Value> {
        if let Some(path) = &self.certificate {
            let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            return Ok(serde_json::json!({ "certificate": pem }));
        }
        let credential = self.credential()?;
        Ok(serde_json::json!({ "credential": credential.expose() }))
    }

    fn credential(self) -> anyhow::Result<Secret<String>> {
        let text = match self.credential {
            Some(text) => text,
            None => {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).context("cannot read the credential from stdin")?;
                text
            }
        };
        let text = text.trim();
        if text.is_empty() {
            bail!("no credential given");
        }
        Ok(Secret::new(text.to_string()))
    }
}

pub async fn run(command: AuthCommand, global: &crate::GlobalArgs) -> anyhow::Result<()> {
    match command {
        AuthCommand::Explain(args) => {
            let body = args.body()?;
            let client = AdminClient::new(global)?;
            let explained = client.post::<AuthExplanation>(&["auth", "explain"], &body).await?;
            output::print_one_with_table(global.json, &explained, &LIMIT_HEADERS, &limit_rows(&explained.body))
        }
    }
}

const LIMIT_HEADERS: [&str; 7] = ["SCOPE", "LIMIT", "MAX", "USED", "RESERVED", "REMAINING", "RESETS IN"];

/// One line per limit of every scope that applies.
fn limit_rows(explanation: &AuthExplanation) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for scope in &explanation.limits {
        let name = match &scope.scope.id {
            Some(id) => format!("{} {id}", scope.scope.kind),
            None => scope.scope.kind.clone(),
        };
        for limit in &scope.limits {
            rows.push(vec![
                name.clone(),
                limit.limit.clone(),
                limit.max.to_string(),
                limit.used.to_string(),
                limit.reserved.to_string(),
                limit.remaining.to_string(),
                limit.resets_in_ms.map_or_else(|| NONE.to_string(), |ms| format!("{ms}ms")),
            ]);
        }
    }
    rows
}

fn kind_name(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::Key => "key",
        CredentialKind::Token => "token",
        CredentialKind::Certificate => "certificate",
        CredentialKind::Unknown => "unknown",
    }
}

/// `tier ← tier_claim = "pro" (claim)`, one per mapped field.
fn claim_line(mapping: &ClaimMapping) -> String {
    let value = mapping.value.as_ref().map_or_else(|| "absent".to_string(), ToString::to_string);
    let source = match mapping.source {
        MappingSource::Claim => "claim",
        MappingSource::Default => "default",
    };
    format!("{} ← {} = {value} → {} ({source})", mapping.field, mapping.claim, mapping.mapped)
}

impl Render for AuthExplanation {
    const PLURAL: &'static str = "explanations";

    fn headers() -> &'static [&'static str] {
        &["KIND", "ACCEPTED", "REFUSED", "ISSUER", "CLAIMS", "PRINCIPAL"]
    }

    /// The first fields, which every explanation has, ending with the principal's id.
    fn row(&self) -> Vec<String> {
        self.fields().into_iter().map(|(_, value)| value).take(Self::headers().len()).collect()
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        let refused = self.refused.as_ref().map(|refused| format!("{}: {}", refused.code, refused.message));
        let claims: Vec<String> = self.claims.iter().map(claim_line).collect();
        let mut fields = vec![
            ("kind", kind_name(self.kind).to_string()),
            ("accepted", if self.accepted { "yes" } else { "no" }.to_string()),
            ("refused", fmt_text(refused.as_deref())),
            ("issuer", fmt_text(self.issuer.as_deref())),
            ("claims", if claims.is_empty() { NONE.to_string() } else { claims.join("; ") }),
        ];
        let Some(principal) = &self.principal else {
            fields.push(("principal", NONE.to_string()));
            return fields;
        };
        let source = match principal.tier_source {
            TierSource::Key => "its own",
            TierSource::Team => "its team's",
            TierSource::Default => "the default tier",
        };
        fields.extend([
            ("principal", principal.id.clone()),
            ("principal_kind", principal.kind.clone()),
            ("principal_issuer", fmt_text(principal.issuer.as_deref())),
            ("subject", fmt_text(principal.subject.as_deref())),
            ("team", fmt_text(principal.team.as_deref())),
            ("credential_id", fmt_text(principal.credential_id.as_deref())),
            ("tier", format!("{} ({source})", principal.tier)),
            ("models", fmt_list(&principal.models)),
            ("scopes", fmt_list(&principal.scopes)),
            ("allowed_cidrs", fmt_list(&principal.allowed_cidrs)),
            ("expires_at", fmt_time(principal.expires_at)),
        ]);
        fields
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use portcullis_types::admin::{ExplainedPrincipal, LimitStateView, Refusal, ScopeLimitsView, ScopeView};

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: AuthCommand,
    }

    fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("portcullis-auth").chain(args.iter().copied()))
    }

    #[test]
    fn explain_takes_the_credential_or_stdin_not_both_nor_neither() {
        let AuthCommand::Explain(args) = parse(&["explain", "pcl_x"]).unwrap().command;
        assert_eq!((args.credential.as_deref(), args.credential_stdin), (Some("pcl_x"), false));
        let AuthCommand::Explain(args) = parse(&["explain", "--credential-stdin"]).unwrap().command;
        assert_eq!((args.credential, args.credential_stdin), (None, true));
        assert!(parse(&["explain"]).is_err());
        assert!(parse(&["explain", "pcl_x", "--credential-stdin"]).is_err());
    }

    #[test]
    fn an_explanation_reads_as_fields_then_its_limits() {
        let explanation = AuthExplanation {
            kind: CredentialKind::Key,
            accepted: false,
            refused: Some(Refusal { code: "revoked_api_key".into(), message: "key key_1 is revoked".into() }),
            issuer: None,
            claims: Vec::new(),
            principal: Some(ExplainedPrincipal {
                id: "key_1".into(),
                kind: "key".into(),
                issuer: None,
                subject: None,
                credential_id: None,
                team: Some("acme".into()),
                tier: "pro".into(),
                tier_source: TierSource::Team,
                models: vec!["smol*".into()],
                scopes: vec!["chat".into()],
                allowed_cidrs: Vec::new(),
                expires_at: None,
            }),
            limits: vec![ScopeLimitsView {
                scope: ScopeView { kind: "key".into(), id: Some("key_1".into()) },
                limits: vec![LimitStateView {
                    limit: "requests_per_minute".into(),
                    max: 60.into(),
                    used: 1.into(),
                    reserved: 0.into(),
                    remaining: 59.into(),
                    resets_in_ms: Some(1000),
                }],
            }],
        };
        let fields = explanation.fields();
        let get = |name: &str| fields.iter().find(|(label, _)| *label == name).map(|(_, value)| value.as_str());
        assert_eq!(get("accepted"), Some("no"));
        assert_eq!(get("refused"), Some("revoked_api_key: key key_1 is revoked"));
        assert_eq!(get("tier"), Some("pro (its team's)"));
        assert_eq!(get("allowed_cidrs"), Some("-"));
        assert_eq!(limit_rows(&explanation), [["key key_1", "requests_per_minute", "60", "1", "0", "59", "1000ms"]]);
        let mapping = ClaimMapping {
            field: "tier".into(),
            claim: "tier".into(),
            value: None,
            mapped: "free".into(),
            source: MappingSource::Default,
        };
        assert_eq!(claim_line(&mapping), "tier ← tier = absent → \"free\" (default)");
    }
}
