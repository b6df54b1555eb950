//! Types that cross a process boundary: the OpenAI error body and model list that clients read,
//! the admin API's request and response bodies (shared by the server and the CLI so they cannot
//! drift apart), [`Secret`], which keeps credentials out of `Debug` output, and [`chain`], how
//! every crate writes an error with its causes into a log line or onto the terminal.

pub mod admin;
mod error_chain;
pub mod millis;
pub mod openai;
mod secret;

pub use error_chain::{Chain, chain};
pub use secret::Secret;
