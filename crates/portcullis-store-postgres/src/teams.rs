//! Teams: named groups of keys with their own tier and limit overrides.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use portcullis_store::{Change, NewTeam, StoreError, StoreResult, TeamPatch, TeamRecord, TeamStore};
use tokio_postgres::Row;

use crate::PostgresStore;
use crate::codec::{from_json, from_secs, get, secs, to_json};
use crate::error::db_err;
use crate::sql::{execute, insert, query, query_opt};

#[async_trait]
impl TeamStore for PostgresStore {
    async fn create_team(&self, team: NewTeam) -> StoreResult<TeamRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        insert(
            &tx,
            "INSERT INTO teams (name, tier, limits, metadata, capture_content, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &team.name,
                &team.tier,
                &to_json(&team.limits)?,
                &to_json(&team.metadata)?,
                &team.capture_content,
                &secs(team.created_at),
            ],
            format!("team {}", team.name),
        )
        .await?;
        let record = select_team(&tx, &team.name, "").await?;
        self.commit_change(tx, &Change::Team(team.name)).await?;
        Ok(record)
    }

    async fn get_team(&self, name: &str) -> StoreResult<TeamRecord> {
        let client = self.client().await?;
        select_team(&client, name, "").await
    }

    async fn list_teams(&self) -> StoreResult<Vec<TeamRecord>> {
        let client = self.client().await?;
        let rows = query(&client, &format!("SELECT {COLUMNS} FROM teams ORDER BY name"), &[]).await?;
        rows.iter().map(team_from_row).collect()
    }

    async fn update_team(&self, name: &str, patch: TeamPatch) -> StoreResult<TeamRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        // FOR UPDATE: a concurrent patch waits, then patches what this one stored.
        let mut team = select_team(&tx, name, "FOR UPDATE").await?;
        if let Some(tier) = patch.tier {
            team.tier = Some(tier);
        }
        if let Some(limits) = patch.limits {
            team.limits = limits;
        }
        if let Some(metadata) = patch.metadata {
            team.metadata = metadata;
        }
        if let Some(capture_content) = patch.capture_content {
            team.capture_content = capture_content;
        }
        execute(
            &tx,
            "UPDATE teams SET tier = $2, limits = $3, metadata = $4, capture_content = $5 WHERE name = $1",
            &[&team.name, &team.tier, &to_json(&team.limits)?, &to_json(&team.metadata)?, &team.capture_content],
        )
        .await?;
        let record = select_team(&tx, name, "").await?;
        self.commit_change(tx, &Change::Team(name.to_owned())).await?;
        Ok(record)
    }
}

const COLUMNS: &str = "name, tier, limits, metadata, capture_content, created_at";

/// The team called `name`; `lock` is empty or `FOR UPDATE`.
async fn select_team(client: &impl GenericClient, name: &str, lock: &str) -> StoreResult<TeamRecord> {
    let sql = format!("SELECT {COLUMNS} FROM teams WHERE name = $1 {lock}");
    let row = query_opt(client, &sql, &[&name]).await?.ok_or(StoreError::NotFound)?;
    team_from_row(&row)
}

fn team_from_row(row: &Row) -> StoreResult<TeamRecord> {
    Ok(TeamRecord {
        name: get(row, 0)?,
        tier: get(row, 1)?,
        limits: from_json(get(row, 2)?)?,
        metadata: from_json(get(row, 3)?)?,
        capture_content: get(row, 4)?,
        created_at: from_secs(get(row, 5)?)?,
    })
}
