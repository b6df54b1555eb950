//! Construction options and errors.

use std::time::Duration;

/// What admissions do while Redis cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnBackendError {
    /// Refuse with [`portcullis_limits::Refusal::Unavailable`] (HTTP 503 with `Retry-After`): no request
    /// passes unless it can be counted against the shared limits. The default.
    Deny,
    /// Admit through a limiter in this process's memory, with every limit divided by `replicas` (rounded
    /// down, a nonzero limit stays at least 1), so that `replicas` replicas each counting alone stay within
    /// the limit together. Set it to the number of replicas that serve traffic.
    Local {
        /// How many replicas share the limits.
        replicas: u32,
    },
}

/// Options of [`crate::RedisLimiter::connect`]. [`RedisLimiterOptions::new`] gives the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisLimiterOptions {
    /// `redis://[:password@]host[:port][/db]`, or `rediss://` for TLS where the `redis` crate has it.
    pub url: String,
    /// Every key starts with `{<key_prefix>}:`; replicas that share limits use the same prefix. Must not be
    /// empty nor contain `{` or `}`. Default `portcullis`.
    pub key_prefix: String,
    /// Longest wait for one Redis call, connecting included; past it the call counts as a failure.
    /// Default 250 ms.
    pub timeout: Duration,
    /// How long a reservation stays held in Redis without being renewed: a replica that dies frees its
    /// reservations (charged in full) after at most this long. Renewed every third of it while the
    /// reservation runs. At least three timeouts. Default 30 s.
    pub lease: Duration,
    /// After a failure, how long admissions follow the outage policy before Redis is tried again.
    /// Default 1 s.
    pub retry_interval: Duration,
    /// What admissions do while Redis cannot be reached. Default [`OnBackendError::Deny`].
    pub on_backend_error: OnBackendError,
}

impl RedisLimiterOptions {
    /// Defaults for the Redis at `url`.
    pub fn new(url: impl Into<String>) -> RedisLimiterOptions {
        RedisLimiterOptions {
            url: url.into(),
            key_prefix: "portcullis".to_owned(),
            timeout: Duration::from_millis(250),
            lease: Duration::from_secs(30),
            retry_interval: Duration::from_secs(1),
            on_backend_error: OnBackendError::Deny,
        }
    }

    /// The first option that cannot work, as the field and why.
    pub(crate) fn validate(&self) -> Result<(), RedisLimiterError> {
        let invalid = |field: &'static str, why: &'static str| Err(RedisLimiterError::Option { field, why });
        if self.timeout.is_zero() {
            return invalid("timeout", "must be positive");
        }
        if self.retry_interval < Duration::from_millis(1) {
            return invalid("retry_interval", "must be at least 1 ms");
        }
        if self.lease < self.timeout.saturating_mul(3) {
            return invalid("lease", "must be at least three timeouts (it is renewed every third of it)");
        }
        if let OnBackendError::Local { replicas: 0 } = self.on_backend_error {
            return invalid("on_backend_error.replicas", "must be at least 1");
        }
        Ok(())
    }
}

/// Why a [`crate::RedisLimiter`] could not be built. An unreachable Redis is not among them: the limiter
/// starts degraded and recovers when Redis answers.
#[derive(Debug, thiserror::Error)]
pub enum RedisLimiterError {
    /// The URL is malformed (the URL itself is not repeated: it may hold a password).
    #[error("invalid Redis URL")]
    Url(#[source] redis::RedisError),
    /// The key prefix is empty or contains a brace.
    #[error("invalid key prefix {prefix:?}: {why}")]
    KeyPrefix {
        /// The prefix given.
        prefix: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An option cannot work.
    #[error("invalid option {field}: {why}")]
    Option {
        /// The option's field name.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `connect` was called outside a Tokio runtime (the lease renewal needs one).
    #[error("RedisLimiter::connect needs a Tokio runtime")]
    NoRuntime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let options = RedisLimiterOptions::new("redis://127.0.0.1");
        assert_eq!(options.key_prefix, "portcullis");
        assert_eq!(options.timeout, Duration::from_millis(250));
        assert_eq!(options.lease, Duration::from_secs(30));
        assert_eq!(options.on_backend_error, OnBackendError::Deny);
        options.validate().unwrap();
    }

    #[test]
    fn each_unworkable_option_is_named() {
        let base = RedisLimiterOptions::new("redis://127.0.0.1");
        let field = |options: RedisLimiterOptions| match options.validate() {
            Err(RedisLimiterError::Option { field, .. }) => field,
            other => panic!("expected an option error, got {other:?}"),
        };
        assert_eq!(field(RedisLimiterOptions { timeout: Duration::ZERO, ..base.clone() }), "timeout");
        assert_eq!(field(RedisLimiterOptions { lease: Duration::from_millis(700), ..base.clone() }), "lease");
        assert_eq!(field(RedisLimiterOptions { retry_interval: Duration::ZERO, ..base.clone() }), "retry_interval");
        assert_eq!(
            field(RedisLimiterOptions { on_backend_error: OnBackendError::Local { replicas: 0 }, ..base }),
            "on_backend_error.replicas"
        );
    }
}
