//! The model name the client asked for, in the answer it gets: a model server names itself
//! (`"model":"SmolLM2-135M-Instruct"`, or a fallback's name), which tells clients what runs
//! behind the gateway and breaks those that compare the name with the one they sent. The
//! `"model"` members holding the server's name are rewritten to the client's, in a JSON answer
//! and in every stream event, whatever the API (chat chunks, `response.model`,
//! `message.model`), unless the serving model's config sets `expose_upstream_model`.
//!
//! Nothing is parsed: the server's quoted name is searched for and rewritten where a `"model"`
//! member holds it (the Responses API's ids are rewritten the same way, see `sealed`). A stream
//! is renamed through [`super::rewrite::Rewritten`]; relayed by [`super::meter::Metered`], it
//! comes in whole events, so a name never straddles two frames.

use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;

use super::rewrite::Rewrite;

/// One rewrite of a member's value: the member's quoted key, the server's quoted value, and the
/// one the client is shown.
#[derive(Debug, Clone)]
pub struct Rename {
    key: &'static [u8],
    upstream: Finder<'static>,
    client: Bytes,
}

impl Rename {
    /// The rewrite from `upstream` (the name the model server was sent) to `client` (the name the
    /// client sent); `None` when they are the same or the serving model exposes its own.
    pub fn new(upstream: &str, client: &str, expose_upstream: bool) -> Option<Rename> {
        if expose_upstream || upstream == client {
            return None;
        }
        Rename::member(b"\"model\"", upstream, client)
    }

    /// The rewrite of `key`'s value (`key` quoted, as in JSON) from `upstream` to `client`.
    pub fn member(key: &'static [u8], upstream: &str, client: &str) -> Option<Rename> {
        let quoted = |name: &str| serde_json::to_vec(name).ok();
        let upstream = Finder::new(&quoted(upstream)?).into_owned();
        Some(Rename { key, upstream, client: Bytes::from(quoted(client)?) })
    }

    /// `bytes` with every member `key` that holds the server's value holding the client's;
    /// `None` when there is none (nothing to copy).
    pub fn apply(&self, bytes: &[u8]) -> Option<Bytes> {
        let needle = self.upstream.needle().len();
        let mut out: Option<BytesMut> = None;
        let mut copied = 0;
        for at in self.upstream.find_iter(bytes) {
            if !follows_key(&bytes[..at], self.key) {
                continue;
            }
            let out = out.get_or_insert_with(|| BytesMut::with_capacity(bytes.len() + self.client.len()));
            out.extend_from_slice(&bytes[copied..at]);
            out.extend_from_slice(&self.client);
            copied = at + needle;
        }
        let mut out = out?;
        out.extend_from_slice(&bytes[copied..]);
        Some(out.freeze())
    }
}

/// Whether `before` ends with `key`, a colon and optional whitespace around it.
fn follows_key(before: &[u8], key: &[u8]) -> bool {
    let trimmed = before.trim_ascii_end();
    let Some(before_colon) = trimmed.strip_suffix(b":") else { return false };
    before_colon.trim_ascii_end().ends_with(key)
}

impl Rewrite for Rename {
    fn rewrite(&mut self, data: &[u8]) -> Option<Bytes> {
        self.apply(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rename(text: &str) -> Option<String> {
        let rename = Rename::new("Up-Model", "m", false).unwrap();
        rename.apply(text.as_bytes()).map(|bytes| String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn only_model_members_holding_the_servers_name_are_rewritten() {
        assert_eq!(
            rename(r#"{"id":"x","model":"Up-Model","choices":[]}"#).unwrap(),
            r#"{"id":"x","model":"m","choices":[]}"#
        );
        assert_eq!(
            rename("data: {\"response\":{\"model\" : \"Up-Model\"},\"x\":{\"model\":\"Up-Model\"}}\n\n").unwrap(),
            "data: {\"response\":{\"model\" : \"m\"},\"x\":{\"model\":\"m\"}}\n\n"
        );
        assert_eq!(
            rename(r#"{"content":"I am \"Up-Model\"","model":"Up-Model-2"}"#),
            None,
            "text and other names stay"
        );
        assert_eq!(rename(r#"{"note":"Up-Model"}"#), None);
    }

    #[test]
    fn nothing_to_rename_when_the_names_agree_or_the_server_is_exposed() {
        assert!(Rename::new("m", "m", false).is_none());
        assert!(Rename::new("Up-Model", "m", true).is_none());
    }

    #[test]
    fn names_are_written_as_json_strings() {
        let rename = Rename::new("a\"b", "c\\d", false).unwrap();
        let renamed = rename.apply(br#"{"model":"a\"b"}"#).unwrap();
        assert_eq!(&renamed[..], br#"{"model":"c\\d"}"#);
    }
}
