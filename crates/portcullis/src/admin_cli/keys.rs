//! `portcullis keys ...`: API keys through `/admin/v1/keys`.

use anyhow::bail;
use clap::{Args, Subcommand};
use portcullis_types::admin::{
    CreateKeyRequest, KeyStatus, KeyView, ListResponse, RotateKeyRequest, TierSource, UpdateKeyRequest,
};
use serde_json::Value;

use super::client::AdminClient;
use super::output::{self, Render, fmt_json, fmt_list, fmt_serialized, fmt_text, fmt_time};
use super::{parse_duration_arg, parse_metadata, split_list};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key. Its secret is printed once and never again.
    Create(CreateArgs),
    /// List keys (active and expired; --all adds revoked ones).
    List {
        /// Only keys of this team.
        #[arg(long)]
        team: Option<String>,
        /// Include revoked keys.
        #[arg(long)]
        all: bool,
    },
    /// Show one key.
    Show {
        /// Public key id.
        id: String,
    },
    /// Change a key; flags not given are left as they are.
    Update(UpdateArgs),
    /// Revoke a key at once.
    Revoke {
        /// Public key id.
        id: String,
    },
    /// Issue a new secret for a key; the old one keeps working for the grace period.
    Rotate {
        /// Public key id.
        id: String,
        /// How long the old secret stays valid (`0s` ends it at once; server default if omitted).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        grace: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Human name of the key.
    #[arg(long)]
    name: String,
    /// Team the key belongs to.
    #[arg(long)]
    team: Option<String>,
    #[command(flatten)]
    settings: KeySettings,
    /// Record the key's prompts and completions (redacted) in the audit log. Admins only.
    #[arg(long)]
    capture_content: bool,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Public key id.
    id: String,
    /// New human name.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    settings: KeySettings,
    /// Remove the expiry.
    #[arg(long, conflicts_with = "expires_in")]
    no_expiry: bool,
    /// Remove the key's own tier: it follows its team's (else `limits.default_tier`) again.
    #[arg(long, conflicts_with = "tier")]
    inherit_tier: bool,
    /// Turn recording of the key's (redacted) prompts and completions on or off. Admins only.
    #[arg(long, value_name = "true|false")]
    capture_content: Option<bool>,
}

/// Flags `create` and `update` share. Lists take comma-separated values, repeated flags, or both;
/// on update, an empty value (`--models ''`) clears the list.
#[derive(Debug, Args)]
struct KeySettings {
    /// Tier name, the key's own. Without one the key follows its team's tier (else
    /// `limits.default_tier`), also when that changes.
    #[arg(long)]
    tier: Option<String>,
    /// Model globs the key may use (`smollm*,gemma*`).
    #[arg(long, value_name = "GLOBS")]
    models: Option<Vec<String>>,
    /// Scopes granted to the key.
    #[arg(long, value_name = "LIST")]
    scopes: Option<Vec<String>>,
    /// Client networks the key may be used from (`10.0.0.0/8,192.168.1.0/24`).
    #[arg(long, value_name = "LIST")]
    cidr: Option<Vec<String>>,
    /// Lifetime from now (`30d`, `12h`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    expires_in: Option<String>,
    /// Free-form JSON object stored with the key.
    #[arg(long, value_name = "JSON", value_parser = parse_metadata)]
    metadata: Option<Value>,
}

impl CreateArgs {
    fn into_request(self) -> CreateKeyRequest {
        let KeySettings { tier, models, scopes, cidr, expires_in, metadata } = self.settings;
        CreateKeyRequest {
            name: self.name,
            team: self.team,
            tier,
            models: split_list(models),
            scopes: split_list(scopes),
            allowed_cidrs: split_list(cidr),
            expires_in,
            metadata,
            capture_content: self.capture_content,
            ..CreateKeyRequest::default()
        }
    }
}

impl UpdateArgs {
    fn into_request(self) -> UpdateKeyRequest {
        let KeySettings { tier, models, scopes, cidr, expires_in, metadata } = self.settings;
        UpdateKeyRequest {
            name: self.name,
            tier,
            models: split_list(models),
            scopes: split_list(scopes),
            allowed_cidrs: split_list(cidr),
            expires_in,
            clear_expiry: self.no_expiry,
            inherit_tier: self.inherit_tier,
            metadata,
            capture_content: self.capture_content,
            ..UpdateKeyRequest::default()
        }
    }
}

pub async fn run(command: KeysCommand, global: &crate::GlobalArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(global)?;
    let json = global.json;
    match command {
        KeysCommand::Create(args) => {
            let created = client.post::<KeyView>(&["keys"], &args.into_request()).await?;
            output::print_issued(json, &created, "key", created.raw_str("key")?)
        }
        KeysCommand::List { team, all } => {
            let mut query = Vec::new();
            if let Some(team) = team.as_deref() {
                query.push(("team", team));
            }
            if all {
                query.push(("include_revoked", "true"));
            }
            output::print_list(json, &client.get::<ListResponse<KeyView>>(&["keys"], &query).await?)
        }
        KeysCommand::Show { id } => output::print_one(json, &client.get::<KeyView>(&["keys", &id], &[]).await?),
        KeysCommand::Update(args) => {
            let id = args.id.clone();
            let body = args.into_request();
            if body == UpdateKeyRequest::default() {
                bail!(
                    "nothing to update: give at least one of --name, --tier, --inherit-tier, --models, --scopes, --cidr, --expires-in, --no-expiry, --metadata, --capture-content"
                );
            }
            output::print_one(json, &client.patch::<KeyView>(&["keys", &id], &body).await?)
        }
        KeysCommand::Revoke { id } => {
            output::print_one(json, &client.post_empty::<KeyView>(&["keys", &id, "revoke"]).await?)
        }
        KeysCommand::Rotate { id, grace } => {
            let rotated = client.post::<KeyView>(&["keys", &id, "rotate"], &RotateKeyRequest { grace }).await?;
            output::print_issued(json, &rotated, "key", rotated.raw_str("key")?)
        }
    }
}

impl Render for KeyView {
    const PLURAL: &'static str = "keys";

    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "PREFIX", "TEAM", "TIER", "STATUS", "EXPIRES", "LAST USED"]
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.prefix.clone(),
            fmt_text(self.team.as_deref()),
            tier(self),
            status(self.status).to_string(),
            fmt_time(self.expires_at),
            fmt_time(self.last_used_at),
        ]
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("prefix", self.prefix.clone()),
            ("team", fmt_text(self.team.as_deref())),
            ("tier", tier(self)),
            ("status", status(self.status).to_string()),
            ("models", fmt_list(&self.models)),
            ("scopes", fmt_list(&self.scopes)),
            ("allowed_cidrs", fmt_list(&self.allowed_cidrs)),
            ("limits", fmt_serialized(&self.limits)),
            ("metadata", fmt_json(&self.metadata)),
            ("expires_at", fmt_time(self.expires_at)),
            ("capture_content", self.capture_content.to_string()),
            ("created_by", self.created_by.clone()),
            ("created_at", fmt_time(Some(self.created_at))),
            ("revoked_at", fmt_time(self.revoked_at)),
            ("last_used_at", fmt_time(self.last_used_at)),
        ]
    }
}

/// `pro`, or `pro (team's)` / `free (default)` for a tier the key follows rather than has.
fn tier(key: &KeyView) -> String {
    match key.tier_source {
        TierSource::Key => key.tier.clone(),
        TierSource::Team => format!("{} (team's)", key.tier),
        TierSource::Default => format!("{} (default)", key.tier),
    }
}

fn status(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Active => "active",
        KeyStatus::Expired => "expired",
        KeyStatus::Revoked => "revoked",
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        cmd: KeysCommand,
        #[command(flatten)]
        global: crate::GlobalArgs,
    }

    fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("portcullis-keys").chain(args.iter().copied()))
    }

    #[test]
    fn create_parses_lists_and_global_flags_after_the_subcommand() -> anyhow::Result<()> {
        let cli = parse(&[
            "create",
            "--name",
            "ci-bot",
            "--team",
            "acme",
            "--tier",
            "free",
            "--models",
            "smollm*,gemma*",
            "--models",
            "qwen*",
            "--expires-in",
            "30d",
            "--cidr",
            "10.0.0.0/8",
            "--metadata",
            r#"{"owner":"ci"}"#,
            "--capture-content",
            "--json",
            "--admin-url",
            "http://127.0.0.1:9999",
        ])?;
        assert!(cli.global.json);
        assert_eq!(cli.global.admin_url, "http://127.0.0.1:9999");
        let KeysCommand::Create(args) = cli.cmd else { anyhow::bail!("expected create, got {:?}", cli.cmd) };
        let request = args.into_request();
        assert_eq!(
            request,
            CreateKeyRequest {
                name: "ci-bot".into(),
                team: Some("acme".into()),
                tier: Some("free".into()),
                models: Some(vec!["smollm*".into(), "gemma*".into(), "qwen*".into()]),
                allowed_cidrs: Some(vec!["10.0.0.0/8".into()]),
                expires_in: Some("30d".into()),
                metadata: Some(serde_json::json!({"owner": "ci"})),
                capture_content: true,
                ..CreateKeyRequest::default()
            }
        );
        Ok(())
    }

    #[test]
    fn create_needs_only_a_name_and_sends_only_what_was_given() -> anyhow::Result<()> {
        let cli = parse(&["create", "--name", "bare"])?;
        assert!(!cli.global.json);
        let KeysCommand::Create(args) = cli.cmd else { anyhow::bail!("expected create") };
        assert_eq!(serde_json::to_value(args.into_request())?, serde_json::json!({"name": "bare"}));
        assert!(parse(&["create"]).is_err());
        Ok(())
    }

    #[test]
    fn create_rejects_bad_durations_and_metadata() {
        assert!(parse(&["create", "--name", "x", "--expires-in", "30 days"]).is_err());
        assert!(parse(&["create", "--name", "x", "--metadata", "not json"]).is_err());
    }

    #[test]
    fn update_expiry_flags_are_exclusive_and_lists_can_be_cleared() -> anyhow::Result<()> {
        assert!(parse(&["update", "k1", "--expires-in", "1d", "--no-expiry"]).is_err());
        let cli = parse(&["update", "k1", "--no-expiry", "--models", "", "--json"])?;
        let KeysCommand::Update(args) = cli.cmd else { anyhow::bail!("expected update") };
        assert_eq!(args.id, "k1");
        assert_eq!(serde_json::to_value(args.into_request())?, serde_json::json!({"models": [], "clear_expiry": true}));
        Ok(())
    }

    #[test]
    fn update_inherit_tier_excludes_a_tier() -> anyhow::Result<()> {
        assert!(parse(&["update", "k1", "--inherit-tier", "--tier", "pro"]).is_err());
        let cli = parse(&["update", "k1", "--inherit-tier"])?;
        let KeysCommand::Update(args) = cli.cmd else { anyhow::bail!("expected update") };
        assert_eq!(serde_json::to_value(args.into_request())?, serde_json::json!({"inherit_tier": true}));
        Ok(())
    }

    #[test]
    fn update_turns_capture_on_or_off_by_value() -> anyhow::Result<()> {
        for (value, expected) in [("true", true), ("false", false)] {
            let cli = parse(&["update", "k1", "--capture-content", value])?;
            let KeysCommand::Update(args) = cli.cmd else { anyhow::bail!("expected update") };
            assert_eq!(serde_json::to_value(args.into_request())?, serde_json::json!({"capture_content": expected}));
        }
        assert!(parse(&["update", "k1", "--capture-content"]).is_err(), "update needs the value");
        assert!(parse(&["update", "k1", "--capture-content", "yes"]).is_err());
        Ok(())
    }

    #[test]
    fn list_and_rotate_flags() -> anyhow::Result<()> {
        let cli = parse(&["list", "--team", "acme", "--all"])?;
        assert!(matches!(cli.cmd, KeysCommand::List { team: Some(ref team), all: true } if team == "acme"));
        let cli = parse(&["rotate", "k1", "--grace", "1h"])?;
        assert!(
            matches!(cli.cmd, KeysCommand::Rotate { ref id, grace: Some(ref grace) } if id == "k1" && grace == "1h")
        );
        Ok(())
    }

    #[test]
    fn a_created_key_reads_from_the_server_shape() -> anyhow::Result<()> {
        // The server serializes `CreatedKey`: the secret in `key` beside the flattened view.
        let raw = serde_json::json!({
            "id": "key_01", "key": "pcl_secret", "name": "ci-bot", "prefix": "pcl_secr", "team": "acme",
            "tier": "free", "tier_source": "team", "models": ["smollm*"], "scopes": [], "allowed_cidrs": [], "limits": {},
            "metadata": {}, "status": "active", "expires_at": "2025-02-01T00:00:00Z", "created_by": "admin",
            "created_at": "2025-01-02T00:00:00Z", "revoked_at": null, "last_used_at": null
        });
        let view = KeyView::deserialize(&raw)?;
        assert_eq!(view.id, "key_01");
        assert_eq!(view.row()[4], "free (team's)");
        assert_eq!(view.row()[6], "2025-02-01T00:00:00Z");
        assert_eq!(view.row()[7], "-");
        Ok(())
    }
}
