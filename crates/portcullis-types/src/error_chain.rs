//! How an error is written with its causes: `outer: inner: innermost`, each cause once.
//!
//! The project's errors keep their causes as typed sources and leave them out of their own
//! message, so a log line or the CLI's last word needs the whole chain. Some drivers' errors
//! (tokio-postgres, for one) repeat their source in their own message as well; a cause whose
//! text the line already ends with is skipped, so nothing is said twice.

use std::error::Error;
use std::fmt;

/// `error` and its sources, for `tracing` fields (`error = %chain(&error)`) and messages.
pub fn chain<'a>(error: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(error)
}

/// See [`chain`].
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !text.is_empty() && !written.ends_with(&text) {
                written.push_str(": ");
                written.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer {
        message: &'static str,
        cause: Option<Box<Layer>>,
    }

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.message)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.cause.as_deref().map(|cause| cause as &(dyn Error + 'static))
        }
    }

    fn layers(messages: &[&'static str]) -> Layer {
        let mut messages = messages.iter().rev();
        let mut error = Layer { message: messages.next().copied().unwrap_or_default(), cause: None };
        for message in messages {
            error = Layer { message, cause: Some(Box::new(error)) };
        }
        error
    }

    #[test]
    fn every_cause_follows_its_error() {
        let error = layers(&["cannot start", "store unavailable", "connection refused"]);
        assert_eq!(chain(&error).to_string(), "cannot start: store unavailable: connection refused");
    }

    #[test]
    fn a_cause_its_error_already_repeats_is_written_once() {
        let error = layers(&["store unavailable", "db error: ERROR: disk full", "ERROR: disk full"]);
        assert_eq!(chain(&error).to_string(), "store unavailable: db error: ERROR: disk full");
    }

    #[test]
    fn an_error_without_causes_is_its_message() {
        assert_eq!(chain(&layers(&["alone"])).to_string(), "alone");
    }
}
