//! Portcullis configuration: the TOML file's shape ([`Config`]), `${VAR}` substitution, and the
//! checks that run before anything is served. Every error names the field path it is about.
//!
//! The file's shape is for reading and reporting errors; the gateway runs on what
//! [`Config::split`] makes of it: [`Startup`], fixed until a restart, and [`Live`], which a
//! reload replaces.

mod authz;
mod duration;
mod env;
mod fingerprint;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod live;
mod model;
mod oidc;
mod split;
mod startup;
mod tls;
mod validate;

use std::path::Path;

pub use authz::{AuthzConfig, MAX_LEASE, MIN_LEASE};
pub use duration::{ConfigDuration, DurationError, parse_duration};
pub use env::EnvError;
pub use live::{AuditLive, AuthLive, LimitsLive, Live, Models, SecurityThresholds, ServerLive, StoreLive, Tier};
pub use model::*;
pub use oidc::{Audience, ClaimNames, IntrospectionConfig, JwtAlgorithm, MAX_LEEWAY, OidcIssuerConfig};
pub use startup::{AuditStartup, LimiterStartup, SecurityStartup, ServerStartup, Startup, StoreStartup};
pub use tls::{CertificateMapping, CertificateMatch, ClientAuth, TlsConfig, parse_fingerprint};
pub use validate::MAX_HEADERS;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is the source: error chains print it once.
    #[error("cannot read {path}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {error}")]
    Env { path: String, error: EnvError },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads, substitutes `${VAR}` from the process environment, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text, |name| std::env::var(name).ok())
    }

    /// Parses and validates configuration text, resolving `${VAR}` through `lookup`.
    ///
    /// Substitution happens in string values only, after TOML parsing, so a commented-out
    /// `${VAR}` needs no variable and a value cannot inject TOML syntax.
    pub fn parse(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut document: toml::Value = text.parse::<toml::Table>().map(toml::Value::Table).map_err(|error| {
            ConfigError::Parse { path: "(syntax)".into(), message: error.to_string().trim().to_string() }
        })?;
        env::substitute_strings(&mut document, "", &lookup)
            .map_err(|(path, error)| ConfigError::Env { path, error })?;
        let config: Config = serde_path_to_error::deserialize(document).map_err(|error| {
            let path = error.path().to_string();
            let message = error.into_inner().message().trim().to_string();
            ConfigError::Parse { path: if path == "." { "(top level)".into() } else { path }, message }
        })?;
        validate::validate(&config)?;
        Ok(config)
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|model| model.name == name)
    }
}
