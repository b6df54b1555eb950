//! Stored responses belong to whoever made them. A model server that stores responses
//! (OpenAI, vLLM) serves `GET /v1/responses/{id}` or a `previous_response_id` to anyone who
//! names the id; behind a gateway every client shares the gateway's credential, so the id
//! alone would be the key to someone else's conversation.
//!
//! So the gateway never shows a server's id: it hands out a sealed one,
//! `<server id>.<model, hex>.<MAC, hex>`, the MAC being HMAC-SHA-256 (truncated to 128 bits)
//! over the caller's principal, the model that served the response and the server's id. Only
//! the caller that made the response can open it; for anyone else (another key, another
//! token subject) it is the same 404 as an id that never existed, and no id can be forged or
//! moved to another model without the secret.
//!
//! Why a sealed id rather than a binding table in the store: it holds across a fleet and
//! restarts without a write per response (a table would need one before the id reaches the
//! client, in the middle of a stream), it costs nothing on any other path, and it names the
//! model whose servers hold the response. Its secret is derived from `security.key_pepper`,
//! which every replica of a fleet shares already (their key hashes depend on it); without a
//! pepper the gateway draws a random secret at start, and ids then open only on the replica
//! that made them, until it restarts.

use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// What a MAC is truncated to: enough that guessing one is hopeless.
const MAC_BYTES: usize = 16;

/// Separates this use of the pepper from key hashing.
const LABEL: &[u8] = b"portcullis/response-ids/v1";

/// The secret that seals and opens response ids.
#[derive(Clone)]
pub struct ResponseIds {
    key: [u8; 32],
    /// Whether every replica sharing the pepper opens the ids this one seals.
    pub fleet_wide: bool,
}

impl std::fmt::Debug for ResponseIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseIds").field("fleet_wide", &self.fleet_wide).finish_non_exhaustive()
    }
}

/// A sealed id, opened: where the response lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The configured model that served it.
    pub model: String,
    /// The model server's own id.
    pub upstream_id: String,
}

impl ResponseIds {
    /// The secret derived from the key pepper; a random one without it.
    pub fn new(pepper: Option<&str>) -> ResponseIds {
        let mut key = [0u8; 32];
        match pepper {
            Some(pepper) => key.copy_from_slice(&mac(pepper.as_bytes(), &[LABEL])),
            None => {
                tracing::info!("no security.key_pepper: Responses API ids open only on this replica until it restarts");
                OsRng.fill_bytes(&mut key);
            }
        }
        ResponseIds { key, fleet_wide: pepper.is_some() }
    }

    /// The id `principal` is shown for the response `upstream_id` that `model` served.
    pub fn seal(&self, principal: &str, model: &str, upstream_id: &str) -> String {
        let tag = self.tag(principal, model, upstream_id);
        format!("{upstream_id}.{}.{}", hex::encode(model), hex::encode(tag))
    }

    /// The response behind `sealed`, if `principal` sealed it; `None` for anyone else and for
    /// anything that is not a sealed id.
    pub fn open(&self, principal: &str, sealed: &str) -> Option<Opened> {
        let mut parts = sealed.rsplitn(3, '.');
        let (tag, model, upstream_id) = (parts.next()?, parts.next()?, parts.next()?);
        let mut given = [0u8; MAC_BYTES];
        hex::decode_to_slice(tag, &mut given).ok()?;
        let model = String::from_utf8(hex::decode(model).ok()?).ok()?;
        let expected = self.tag(principal, &model, upstream_id);
        bool::from(expected.ct_eq(&given)).then(|| Opened { model, upstream_id: upstream_id.to_string() })
    }

    fn tag(&self, principal: &str, model: &str, upstream_id: &str) -> [u8; MAC_BYTES] {
        // Each field with its length first: no two triples share an input.
        let fields = [principal, model, upstream_id];
        let lengths = fields.map(|field| (field.len() as u64).to_be_bytes());
        let mut parts: Vec<&[u8]> = Vec::with_capacity(6);
        for (length, field) in lengths.iter().zip(fields) {
            parts.push(length);
            parts.push(field.as_bytes());
        }
        let full = mac(&self.key, &parts);
        let mut tag = [0u8; MAC_BYTES];
        tag.copy_from_slice(&full[..MAC_BYTES]);
        tag
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: the error arm cannot happen.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return [0; 32] };
    parts.iter().for_each(|part| mac.update(part));
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_principal_that_sealed_an_id_opens_it() {
        let ids = ResponseIds::new(Some("pepper"));
        let sealed = ids.seal("key-a", "gpt/large", "resp_123");
        assert!(sealed.starts_with("resp_123."), "{sealed}");
        assert!(!sealed.contains('/'), "usable as a path segment: {sealed}");
        let opened = Opened { model: "gpt/large".into(), upstream_id: "resp_123".into() };
        assert_eq!(ids.open("key-a", &sealed), Some(opened));
        assert_eq!(ids.open("key-b", &sealed), None);
        assert_eq!(ids.open("key-a", "resp_123"), None, "a server's bare id opens nothing");
    }

    #[test]
    fn a_replica_with_the_same_pepper_opens_it_and_no_other_secret_does() {
        let sealed = ResponseIds::new(Some("pepper")).seal("key-a", "m", "resp_1");
        assert!(ResponseIds::new(Some("pepper")).open("key-a", &sealed).is_some());
        assert!(ResponseIds::new(Some("other")).open("key-a", &sealed).is_none());
        assert!(ResponseIds::new(None).open("key-a", &sealed).is_none());
    }

    #[test]
    fn a_tampered_id_opens_nothing() {
        let ids = ResponseIds::new(None);
        let sealed = ids.seal("key-a", "m", "resp_1.x");
        assert_eq!(ids.open("key-a", &sealed).map(|opened| opened.upstream_id), Some("resp_1.x".into()));
        let (head, tag) = sealed.rsplit_once('.').unwrap();
        let moved = format!("resp_2.{}.{tag}", hex::encode("m"));
        let other_model = format!("{}.{}.{tag}", "resp_1.x", hex::encode("n"));
        let flipped = format!("{head}.{}", if tag.starts_with('0') { "1" } else { "0" }.to_string() + &tag[1..]);
        for forged in [moved, other_model, flipped, format!("{head}.zz"), String::new(), "..".into()] {
            assert_eq!(ids.open("key-a", &forged), None, "{forged}");
        }
    }
}
