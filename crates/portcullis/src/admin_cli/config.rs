//! `portcullis config status`: `GET /admin/v1/config` — when the running configuration was loaded,
//! how the last reload went, and which settings wait for a restart.

use portcullis_types::admin::{ConfigStatusView, ReloadOutcome};

use super::client::AdminClient;
use super::output::{self, Render, fmt_list, fmt_text, fmt_time};

pub async fn status(global: &crate::GlobalArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(global)?;
    output::print_one(global.json, &client.get::<ConfigStatusView>(&["config"], &[]).await?)
}

impl Render for ConfigStatusView {
    const PLURAL: &'static str = "configurations";

    fn headers() -> &'static [&'static str] {
        &["LOADED", "LAST RELOAD", "OUTCOME", "ERROR", "RESTART REQUIRED"]
    }

    fn row(&self) -> Vec<String> {
        self.fields().into_iter().map(|(_, value)| value).collect()
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        let reload = self.last_reload.as_ref();
        let outcome = reload.map(|reload| match reload.outcome {
            ReloadOutcome::Ok => "ok",
            ReloadOutcome::Error => "error",
        });
        vec![
            ("loaded_at", fmt_time(Some(self.loaded_at))),
            ("last_reload", fmt_time(reload.map(|reload| reload.at))),
            ("outcome", fmt_text(outcome)),
            ("error", fmt_text(reload.and_then(|reload| reload.error.as_deref()))),
            ("restart_required", fmt_list(&self.restart_required)),
        ]
    }
}
