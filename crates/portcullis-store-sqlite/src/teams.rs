//! Teams: named groups of keys with their own tier and limit overrides.

use async_trait::async_trait;
use portcullis_store::{Change, NewTeam, StoreResult, TeamPatch, TeamRecord, TeamStore};
use rusqlite::{Connection, Row, params};

use crate::SqliteStore;
use crate::codec::{Json, UnixTime};
use crate::error::{db_err, insert_err};

#[async_trait]
impl TeamStore for SqliteStore {
    async fn create_team(&self, team: NewTeam) -> StoreResult<TeamRecord> {
        self.mutate(move |tx| {
            tx.execute(
                "INSERT INTO teams (name, tier, limits, metadata, capture_content, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    team.name,
                    team.tier,
                    Json(&team.limits),
                    Json(&team.metadata),
                    team.capture_content,
                    UnixTime(team.created_at)
                ],
            )
            .map_err(insert_err(format!("team {}", team.name)))?;
            Ok((select_team(tx, &team.name)?, Change::Team(team.name)))
        })
        .await
    }

    async fn get_team(&self, name: &str) -> StoreResult<TeamRecord> {
        let name = name.to_owned();
        self.call(move |conn| select_team(conn, &name)).await
    }

    async fn list_teams(&self) -> StoreResult<Vec<TeamRecord>> {
        self.call(|conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {COLUMNS} FROM teams ORDER BY name")).map_err(db_err)?;
            let teams = stmt.query_map([], team_from_row).map_err(db_err)?;
            teams.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn update_team(&self, name: &str, patch: TeamPatch) -> StoreResult<TeamRecord> {
        let name = name.to_owned();
        self.mutate(move |tx| {
            let mut team = select_team(tx, &name)?;
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
            tx.execute(
                "UPDATE teams SET tier = ?2, limits = ?3, metadata = ?4, capture_content = ?5 WHERE name = ?1",
                params![team.name, team.tier, Json(&team.limits), Json(&team.metadata), team.capture_content],
            )
            .map_err(db_err)?;
            Ok((select_team(tx, &name)?, Change::Team(name)))
        })
        .await
    }
}

const COLUMNS: &str = "name, tier, limits, metadata, capture_content, created_at";

fn select_team(conn: &Connection, name: &str) -> StoreResult<TeamRecord> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM teams WHERE name = ?1")).map_err(db_err)?;
    stmt.query_row([name], team_from_row).map_err(db_err)
}

fn team_from_row(row: &Row<'_>) -> rusqlite::Result<TeamRecord> {
    Ok(TeamRecord {
        name: row.get("name")?,
        tier: row.get("tier")?,
        limits: row.get::<_, Json<_>>("limits")?.0,
        metadata: row.get::<_, Json<_>>("metadata")?.0,
        capture_content: row.get("capture_content")?,
        created_at: row.get::<_, UnixTime>("created_at")?.0,
    })
}
