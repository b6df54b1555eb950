//! How the running configuration came to be: when it was loaded, how the last reload went, and
//! which settings of the file wait for a restart. `GET /admin/v1/config` shows it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_types::admin::{ConfigStatusView, ReloadOutcome, ReloadView};
use time::OffsetDateTime;

#[derive(Debug)]
pub struct ReloadStatus {
    current: ArcSwap<ConfigStatusView>,
}

impl ReloadStatus {
    pub fn new(started_at: OffsetDateTime) -> ReloadStatus {
        let view = ConfigStatusView { loaded_at: started_at, last_reload: None, restart_required: Vec::new() };
        ReloadStatus { current: ArcSwap::from_pointee(view) }
    }

    pub fn view(&self) -> Arc<ConfigStatusView> {
        self.current.load_full()
    }

    /// A reload applied the file's live settings; `restart_required` is what it could not apply.
    pub fn applied(&self, at: OffsetDateTime, restart_required: Vec<String>) {
        let last_reload = Some(ReloadView { at, outcome: ReloadOutcome::Ok, error: None });
        self.current.store(Arc::new(ConfigStatusView { loaded_at: at, last_reload, restart_required }));
    }

    /// A reload refused the file; what runs, and what waits for a restart, stay as they were.
    /// Only the first line of `error` is kept: a TOML syntax error quotes the offending line
    /// below it, and that line may hold a secret.
    pub fn refused(&self, at: OffsetDateTime, error: &str) {
        let first_line = error.lines().next().unwrap_or_default().to_string();
        let previous = self.current.load();
        let last_reload = Some(ReloadView { at, outcome: ReloadOutcome::Error, error: Some(first_line) });
        self.current.store(Arc::new(ConfigStatusView { last_reload, ..ConfigStatusView::clone(&previous) }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_reload_keeps_what_runs_and_shows_one_line_of_why() {
        let start = OffsetDateTime::UNIX_EPOCH;
        let status = ReloadStatus::new(start);
        let later = start + time::Duration::seconds(5);
        status.applied(later, vec!["server.listen".into()]);
        status.refused(later + time::Duration::seconds(5), "(syntax): TOML parse error\n1 | url = \"secret\"");
        let view = status.view();
        assert_eq!(view.loaded_at, later);
        assert_eq!(view.restart_required, ["server.listen"]);
        let last = view.last_reload.clone().unwrap();
        assert_eq!((last.outcome, last.error.as_deref()), (ReloadOutcome::Error, Some("(syntax): TOML parse error")));
    }
}
