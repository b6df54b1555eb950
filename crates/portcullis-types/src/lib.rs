//! Types that cross a process boundary: the OpenAI error body and model list that clients read,
//! the admin API's request and response bodies (shared by the server and the CLI so they cannot
//! drift apart), and [`Secret`], which keeps credentials out of `Debug` output.

pub mod admin;
pub mod millis;
pub mod openai;
mod secret;

pub use secret::Secret;
