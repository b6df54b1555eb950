//! Why the server did not start, with each cause kept as a typed source.

use std::net::SocketAddr;

use portcullis_audit::AuditError;
use portcullis_store::StoreError;

/// Why the server did not start. Causes are typed sources, left out of each message: print the
/// chain (`portcullis_types::chain`, anyhow's `{:#}`) to see them, once each.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting that cannot be served as it stands; the message names it.
    #[error("{0}")]
    Config(String),
    /// A setting a library refused; its error is the source.
    #[error("{setting}")]
    Setting { setting: &'static str, source: Box<dyn std::error::Error + Send + Sync> },
    /// A backend this binary was built without (its cargo feature was off).
    #[error(
        "{setting}: this binary was built without the `{feature}` feature; rebuild with it \
         (`cargo build --features {feature}`; it is on by default)"
    )]
    NotBuilt { setting: &'static str, feature: &'static str },
    /// The store failed `during` a start-up step.
    #[error("{during}")]
    Store { during: &'static str, source: StoreError },
    /// The audit writer could not start (its spill file, its sinks, or the store's chain head).
    #[error("cannot start the audit writer")]
    Audit(#[source] AuditError),
    #[error("cannot listen on {address}")]
    Bind { address: SocketAddr, source: std::io::Error },
}

impl StartError {
    pub(crate) fn store(during: &'static str) -> impl FnOnce(StoreError) -> StartError {
        move |source| StartError::Store { during, source }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use portcullis_config::Config;
    use portcullis_types::chain;

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, |_| None).unwrap()
    }

    fn deepest<'a>(error: &'a (dyn Error + 'static)) -> &'a (dyn Error + 'static) {
        error.source().map_or(error, deepest)
    }

    #[tokio::test]
    async fn a_store_that_cannot_open_stops_the_start_with_its_cause_said_once() {
        let directory = tempfile::tempdir().unwrap();
        // A directory where the database file should be: SQLite cannot open it.
        let config = config(&format!("[store]\nurl = \"sqlite://{}\"\n", directory.path().display()));

        let error = crate::migrate(&config.split().0.store).await.unwrap_err();

        assert!(
            matches!(&error, StartError::Store { during: "opening the store", source: StoreError::Unavailable { .. } }),
            "{error:?}"
        );
        let driver = deepest(&error);
        assert!(!std::ptr::addr_eq(driver, &error), "the driver's error is reachable through source()");
        let said = chain(&error).to_string();
        assert!(said.starts_with("opening the store: store unavailable: cannot open "), "{said}");
        assert_eq!(said.matches(&driver.to_string()).count(), 1, "{said}");
    }

    #[test]
    fn backends_left_out_of_the_build_are_refused_by_name() {
        let fleet = config(
            "[store]\nurl = \"postgres://db.invalid/portcullis\"\n[limits]\nbackend = \"redis\"\nredis_url = \"redis://cache.invalid\"\n",
        );
        let (fleet, _) = fleet.split();
        let (memory, _) = config("").split();
        let store_only = portcullis_config::Startup { limits: memory.limits.clone(), ..fleet.clone() };
        let limiter_only = portcullis_config::Startup { store: memory.store, ..fleet };

        let store = crate::check_backends(&store_only);
        let limiter = crate::check_backends(&limiter_only);

        if cfg!(feature = "postgres") {
            assert!(store.is_ok(), "{store:?}");
        } else {
            assert!(
                matches!(store, Err(StartError::NotBuilt { setting: "store.url", feature: "postgres" })),
                "{store:?}"
            );
        }
        if cfg!(feature = "redis") {
            assert!(limiter.is_ok(), "{limiter:?}");
        } else {
            let error = limiter.unwrap_err();
            assert!(matches!(error, StartError::NotBuilt { setting: "limits.backend", feature: "redis" }), "{error:?}");
            assert!(error.to_string().contains("built without the `redis` feature"), "{error}");
        }
    }
}
