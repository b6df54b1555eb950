//! `GET /admin/v1/audit/verify`: every node's hash chain checked, and what broke where.

use axum::Json;
use axum::extract::State;
use portcullis_audit::{ChainBreak, Tampering, VerifyReport, VerifyStatus};
use portcullis_types::admin::{AuditChainStatus, AuditNodeVerifyView, AuditProblem, AuditVerifyView, Role};

use crate::admin::AdminState;
use crate::admin::auth::{AdminCaller, forbidden};
use crate::admin::views::store_error;
use crate::error::ApiError;

/// `GET /admin/v1/audit/verify`: 200 whether or not every chain verifies (`ok` says which); the
/// CLI turns a break into its exit status.
pub async fn verify(State(state): State<AdminState>, caller: AdminCaller) -> Result<Json<AuditVerifyView>, ApiError> {
    let result = verify_chains(&state, &caller).await;
    crate::admin::refusal::audited(&caller, "audit.verify", None, result)
}

async fn verify_chains(state: &AdminState, caller: &AdminCaller) -> Result<Json<AuditVerifyView>, ApiError> {
    if caller.role == Role::TeamAdmin {
        return Err(forbidden("verification reads every team's records: it needs an admin or auditor token"));
    }
    let reports = portcullis_audit::verify_all(state.audit_store().as_ref()).await.map_err(store_error("audit log"))?;
    let nodes: Vec<AuditNodeVerifyView> = reports.into_iter().map(verify_view).collect();
    Ok(Json(AuditVerifyView { ok: nodes.iter().all(|node| node.status == AuditChainStatus::Ok), nodes }))
}

fn verify_view(report: VerifyReport) -> AuditNodeVerifyView {
    let status = match report.status {
        VerifyStatus::Ok => AuditChainStatus::Ok,
        VerifyStatus::Break(ChainBreak { seq, problem }) => AuditChainStatus::Break {
            seq,
            problem: match problem {
                Tampering::Edited => AuditProblem::Edited,
                Tampering::Deleted => AuditProblem::Deleted,
                Tampering::Inserted => AuditProblem::Inserted,
                Tampering::Reordered => AuditProblem::Reordered,
            },
        },
    };
    AuditNodeVerifyView {
        node: report.node,
        records_checked: report.records_checked,
        last_seq: report.last_seq,
        from_checkpoint: report.from_checkpoint,
        status,
    }
}

#[cfg(test)]
mod tests {
    use portcullis_audit::AuditRecord;

    use crate::admin::audit::testing::{BOOTSTRAP, chain, fixture};

    #[tokio::test]
    async fn verify_reports_each_chain_and_is_closed_to_team_admins() {
        let fixture = fixture().await;
        fixture.audit.append_audit(&chain("gw-good", 4)).await.unwrap();
        let mut tampered = chain("gw-bad", 4);
        tampered[2].status = 500;
        fixture.audit.append_audit(&tampered).await.unwrap();

        for token in [BOOTSTRAP, fixture.auditor.as_str()] {
            let (status, body) = fixture.json(token, "/admin/v1/audit/verify").await;
            assert_eq!((status, &body["ok"]), (200, &serde_json::json!(false)), "{body}");
            let nodes = body["nodes"].as_array().unwrap();
            let node = |name: &str| nodes.iter().find(|node| node["node"] == name).unwrap().clone();
            assert_eq!(
                node("gw-good"),
                serde_json::json!({"node": "gw-good", "records_checked": 4, "last_seq": 4,
                                   "from_checkpoint": null, "status": "ok"})
            );
            assert_eq!(
                node("gw-bad"),
                serde_json::json!({"node": "gw-bad", "records_checked": 2, "last_seq": 2, "from_checkpoint": null,
                                   "status": {"break": {"seq": 3, "problem": "edited"}}})
            );
        }
        let (status, body) = fixture.json(&fixture.team_admin, "/admin/v1/audit/verify").await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
    }

    #[tokio::test]
    async fn verify_names_swapped_and_inserted_records() {
        let fixture = fixture().await;
        let mut swapped = chain("gw-swapped", 6);
        let (second, fifth) = (swapped[1].clone(), swapped[4].clone());
        swapped[1] = AuditRecord { seq: 2, ..fifth };
        swapped[4] = AuditRecord { seq: 5, ..second };
        fixture.audit.append_audit(&swapped).await.unwrap();
        let mut inserted = chain("gw-inserted", 6);
        let forged = AuditRecord { reason: Some("forged".into()), ..inserted[2].clone() };
        for record in &mut inserted[2..] {
            record.seq += 1;
        }
        inserted.insert(2, forged);
        fixture.audit.append_audit(&inserted).await.unwrap();

        let (status, body) = fixture.json(BOOTSTRAP, "/admin/v1/audit/verify").await;
        assert_eq!(status, 200, "{body}");
        let nodes = body["nodes"].as_array().unwrap();
        let status_of = |name: &str| nodes.iter().find(|node| node["node"] == name).unwrap()["status"].clone();
        assert_eq!(status_of("gw-swapped"), serde_json::json!({"break": {"seq": 2, "problem": "reordered"}}));
        assert_eq!(status_of("gw-inserted"), serde_json::json!({"break": {"seq": 3, "problem": "inserted"}}));
    }
}
