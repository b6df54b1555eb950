//! Who a caller is and what it may do: the `pcl_` key and `pct_` admin token formats, how their
//! secrets are hashed for storage, model globs, scopes and address allow-lists, and the identity
//! a verified token or client certificate gives its holder.

mod base62;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod glob;
mod hash;
mod identity;
mod policy;
mod secret;

pub use glob::ModelGlobs;
pub use hash::{SecretHash, SecretHasher};
pub use identity::{ExternalIdentity, IdentityKind};
pub use policy::{CidrList, Scope, Scopes, UnknownScope};
pub use secret::{FormatError, SecretKind, SecretToken};
