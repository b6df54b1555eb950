//! `portcullis tokens ...`: admin tokens through `/admin/v1/tokens`.

use anyhow::bail;
use clap::Subcommand;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use portcullis_types::admin::{CreateTokenRequest, ListResponse, Role, TokenView};

use super::client::AdminClient;
use super::output::{self, Render, fmt_text, fmt_time};

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create an admin token. It is printed once and never again.
    Create {
        /// Human name of the token.
        #[arg(long)]
        name: String,
        /// What the token may do.
        #[arg(long, value_parser = role_parser())]
        role: Role,
        /// The team a team_admin token is limited to (required for team_admin, refused otherwise).
        #[arg(long)]
        team: Option<String>,
    },
    /// List admin tokens.
    List,
    /// Revoke an admin token at once.
    Revoke {
        /// Public token id.
        id: String,
    },
}

fn role_parser() -> impl TypedValueParser<Value = Role> {
    PossibleValuesParser::new([Role::Admin, Role::TeamAdmin, Role::Auditor].map(Role::as_str))
        .try_map(|text| Role::parse(&text).ok_or_else(|| format!("unknown role {text:?}")))
}

pub async fn run(command: TokensCommand, global: &crate::GlobalArgs) -> anyhow::Result<()> {
    if let TokensCommand::Create { role, team, .. } = &command {
        match (role, team) {
            (Role::TeamAdmin, None) => bail!("a team_admin token needs --team"),
            (Role::Admin | Role::Auditor, Some(_)) => bail!("--team applies only to team_admin tokens"),
            _ => {}
        }
    }
    let client = AdminClient::new(global)?;
    let json = global.json;
    match command {
        TokensCommand::Create { name, role, team } => {
            let created = client.post::<TokenView>(&["tokens"], &CreateTokenRequest { name, role, team }).await?;
            output::print_issued(json, &created, "token", created.raw_str("token")?)
        }
        TokensCommand::List => {
            output::print_list(json, &client.get::<ListResponse<TokenView>>(&["tokens"], &[]).await?)
        }
        TokensCommand::Revoke { id } => {
            output::print_one(json, &client.post_empty::<TokenView>(&["tokens", &id, "revoke"]).await?)
        }
    }
}

impl Render for TokenView {
    const PLURAL: &'static str = "admin tokens";

    fn headers() -> &'static [&'static str] {
        &["ID", "NAME", "PREFIX", "ROLE", "TEAM", "CREATED", "REVOKED"]
    }

    fn row(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.prefix.clone(),
            self.role.as_str().to_string(),
            fmt_text(self.team.as_deref()),
            fmt_time(Some(self.created_at)),
            fmt_time(self.revoked_at),
        ]
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("id", self.id.clone()),
            ("name", self.name.clone()),
            ("prefix", self.prefix.clone()),
            ("role", self.role.as_str().to_string()),
            ("team", fmt_text(self.team.as_deref())),
            ("created_by", self.created_by.clone()),
            ("created_at", fmt_time(Some(self.created_at))),
            ("revoked_at", fmt_time(self.revoked_at)),
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
        cmd: TokensCommand,
        #[command(flatten)]
        global: crate::GlobalArgs,
    }

    #[test]
    fn create_parses_the_role() -> anyhow::Result<()> {
        let cli = TestCli::try_parse_from([
            "t",
            "create",
            "--name",
            "ops",
            "--role",
            "team_admin",
            "--team",
            "acme",
            "--json",
        ])?;
        assert!(cli.global.json);
        let TokensCommand::Create { name, role, team } = cli.cmd else { anyhow::bail!("expected create") };
        assert_eq!((name.as_str(), role, team.as_deref()), ("ops", Role::TeamAdmin, Some("acme")));
        Ok(())
    }

    #[test]
    fn unknown_roles_are_refused_by_the_parser() {
        assert!(TestCli::try_parse_from(["t", "create", "--name", "x", "--role", "root"]).is_err());
        assert!(TestCli::try_parse_from(["t", "create", "--name", "x"]).is_err());
    }
}
