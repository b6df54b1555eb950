//! `audit verify`: every node's chain as `GET /admin/v1/audit/verify` checked it; the exit status
//! says whether all verified.

use anyhow::bail;
use portcullis_types::admin::{AuditChainStatus, AuditVerifyView};

use crate::admin_cli::client::AdminClient;
use crate::admin_cli::output::{self, Streaming, clean};

pub(super) async fn verify(global: &crate::GlobalArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(global)?;
    let fetched = client.get::<AuditVerifyView>(&["audit", "verify"], &[]).await?;
    let mut out = Streaming::stdout();
    if global.json {
        out.line(&output::json_text(&serde_json::to_string_pretty(&fetched.raw)?))?;
    } else {
        if fetched.body.nodes.is_empty() {
            out.line("no audit records to verify")?;
        }
        for line in verify_lines(&fetched.body) {
            out.line(&line)?;
        }
    }
    out.finish()?;
    let broken = fetched.body.nodes.iter().filter(|node| node.status != AuditChainStatus::Ok).count();
    if !fetched.body.ok || broken > 0 {
        bail!("{broken} of {} audit chain(s) failed verification", fetched.body.nodes.len());
    }
    Ok(())
}

fn verify_lines(view: &AuditVerifyView) -> Vec<String> {
    view.nodes
        .iter()
        .map(|node| {
            let name = clean(&node.node);
            match node.status {
                AuditChainStatus::Ok => {
                    let from = node.from_checkpoint.map(|seq| format!(" (from checkpoint {seq})")).unwrap_or_default();
                    format!("OK {name}: {} records{from}", node.records_checked)
                }
                AuditChainStatus::Break { seq, problem } => {
                    format!("BROKEN {name}: first problem at seq {seq}: {}", problem.as_str())
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use portcullis_types::admin::{AuditNodeVerifyView, AuditProblem};

    use super::*;

    #[test]
    fn verify_lines_name_each_node_and_its_problem() {
        let node = |name: &str, from_checkpoint, status| AuditNodeVerifyView {
            node: name.into(),
            records_checked: 42,
            last_seq: 42,
            from_checkpoint,
            status,
        };
        let broken = |seq, problem| AuditChainStatus::Break { seq, problem };
        let view = AuditVerifyView {
            ok: false,
            nodes: vec![
                node("gw-1", None, AuditChainStatus::Ok),
                node("gw-2", Some(100), AuditChainStatus::Ok),
                node("gw-3", None, broken(17, AuditProblem::Edited)),
                node("gw-4", None, broken(18, AuditProblem::Deleted)),
                node("gw-5", None, broken(19, AuditProblem::Inserted)),
                node("gw-6", None, broken(20, AuditProblem::Reordered)),
            ],
        };
        assert_eq!(
            verify_lines(&view),
            [
                "OK gw-1: 42 records",
                "OK gw-2: 42 records (from checkpoint 100)",
                "BROKEN gw-3: first problem at seq 17: edited",
                "BROKEN gw-4: first problem at seq 18: deleted",
                "BROKEN gw-5: first problem at seq 19: inserted",
                "BROKEN gw-6: first problem at seq 20: reordered",
            ]
        );
    }

    #[test]
    fn the_server_answer_reads_back() -> anyhow::Result<()> {
        let verified: AuditVerifyView = serde_json::from_value(serde_json::json!({
            "ok": false,
            "nodes": [
                {"node": "a", "records_checked": 3, "last_seq": 3, "from_checkpoint": null, "status": "ok"},
                {"node": "b", "records_checked": 1, "last_seq": 1, "from_checkpoint": 5,
                 "status": {"break": {"seq": 7, "problem": "reordered"}}}
            ]
        }))?;
        assert_eq!(verified.nodes[0].status, AuditChainStatus::Ok);
        assert_eq!(verified.nodes[1].status, AuditChainStatus::Break { seq: 7, problem: AuditProblem::Reordered });
        Ok(())
    }
}
