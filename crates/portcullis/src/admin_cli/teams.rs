//! `portcullis teams ...`: teams through `/admin/v1/teams`.

use anyhow::bail;
use clap::{Args, Subcommand};
use portcullis_types::admin::{CreateTeamRequest, ListResponse, TeamView, UpdateTeamRequest};
use serde_json::Value;

use super::client::AdminClient;
use super::output::{self, Render, fmt_json, fmt_serialized, fmt_text, fmt_time};
use super::parse_metadata;

#[derive(Debug, Subcommand)]
pub enum TeamsCommand {
    /// Create a team.
    Create {
        /// Team name.
        name: String,
        #[command(flatten)]
        settings: TeamSettings,
        /// Record the prompts and completions (redacted) of every key of the team in the audit log.
        #[arg(long)]
        capture_content: bool,
    },
    /// List teams.
    List,
    /// Show one team.
    Show {
        /// Team name.
        name: String,
    },
    /// Change a team; flags not given are left as they are.
    Update {
        /// Team name.
        name: String,
        #[command(flatten)]
        settings: TeamSettings,
        /// Turn recording of the team's (redacted) prompts and completions on or off.
        #[arg(long, value_name = "true|false")]
        capture_content: Option<bool>,
    },
}

#[derive(Debug, Args)]
pub struct TeamSettings {
    /// Tier for the team's keys.
    #[arg(long)]
    tier: Option<String>,
    /// Free-form JSON object stored with the team.
    #[arg(long, value_name = "JSON", value_parser = parse_metadata)]
    metadata: Option<Value>,
}

pub async fn run(command: TeamsCommand, global: &crate::GlobalArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(global)?;
    let json = global.json;
    match command {
        TeamsCommand::Create { name, settings: TeamSettings { tier, metadata }, capture_content } => {
            let request = CreateTeamRequest { name, tier, metadata, capture_content, ..CreateTeamRequest::default() };
            output::print_one(json, &client.post::<TeamView>(&["teams"], &request).await?)
        }
        TeamsCommand::List => output::print_list(json, &client.get::<ListResponse<TeamView>>(&["teams"], &[]).await?),
        TeamsCommand::Show { name } => output::print_one(json, &client.get::<TeamView>(&["teams", &name], &[]).await?),
        TeamsCommand::Update { name, settings: TeamSettings { tier, metadata }, capture_content } => {
            let request = UpdateTeamRequest { tier, metadata, capture_content, ..UpdateTeamRequest::default() };
            if request == UpdateTeamRequest::default() {
                bail!("nothing to update: give at least one of --tier, --metadata, --capture-content");
            }
            output::print_one(json, &client.patch::<TeamView>(&["teams", &name], &request).await?)
        }
    }
}

impl Render for TeamView {
    const PLURAL: &'static str = "teams";

    fn headers() -> &'static [&'static str] {
        &["NAME", "TIER", "CREATED"]
    }

    fn row(&self) -> Vec<String> {
        vec![self.name.clone(), fmt_text(self.tier.as_deref()), fmt_time(Some(self.created_at))]
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.name.clone()),
            ("tier", fmt_text(self.tier.as_deref())),
            ("limits", fmt_serialized(&self.limits)),
            ("metadata", fmt_json(&self.metadata)),
            ("capture_content", self.capture_content.to_string()),
            ("created_at", fmt_time(Some(self.created_at))),
        ]
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        cmd: TeamsCommand,
        #[command(flatten)]
        global: crate::GlobalArgs,
    }

    #[test]
    fn create_takes_the_name_positionally_and_global_flags_after_it() -> anyhow::Result<()> {
        let cli = TestCli::try_parse_from(["t", "create", "acme corp", "--tier", "pro", "--json"])?;
        assert!(cli.global.json);
        let TeamsCommand::Create { name, settings, capture_content } = cli.cmd else {
            anyhow::bail!("expected create")
        };
        assert_eq!(name, "acme corp");
        assert_eq!(settings.tier.as_deref(), Some("pro"));
        assert!(settings.metadata.is_none());
        assert!(!capture_content, "capture is off unless asked for");
        Ok(())
    }

    #[test]
    fn capture_is_a_flag_on_create_and_takes_a_value_on_update() -> anyhow::Result<()> {
        let cli = TestCli::try_parse_from(["t", "create", "acme", "--capture-content"])?;
        assert!(matches!(cli.cmd, TeamsCommand::Create { capture_content: true, .. }));
        let cli = TestCli::try_parse_from(["t", "update", "acme", "--capture-content", "false"])?;
        assert!(matches!(cli.cmd, TeamsCommand::Update { capture_content: Some(false), .. }));
        assert!(TestCli::try_parse_from(["t", "update", "acme", "--capture-content"]).is_err());
        Ok(())
    }

    #[test]
    fn update_and_show_parse() -> anyhow::Result<()> {
        let cli = TestCli::try_parse_from(["t", "update", "acme", "--metadata", r#"{"cost_center":42}"#])?;
        let TeamsCommand::Update { settings, .. } = cli.cmd else { anyhow::bail!("expected update") };
        assert_eq!(settings.metadata, Some(serde_json::json!({"cost_center": 42})));
        assert!(TestCli::try_parse_from(["t", "show"]).is_err());
        Ok(())
    }
}
