//! Scopes and client-address allow-lists.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// What a credential may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Chat,
    Completions,
    Embeddings,
    Models,
    /// `POST /v1/responses` and what reads or deletes a stored response.
    Responses,
    /// Anthropic's `POST /v1/messages` and `/v1/messages/count_tokens`.
    Messages,
    /// `POST /v1/rerank`, where a model enables it.
    Rerank,
    /// `POST /v1/tokenize` and `/v1/detokenize`, where a model enables them.
    Tokenize,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::Chat,
        Scope::Completions,
        Scope::Embeddings,
        Scope::Models,
        Scope::Responses,
        Scope::Messages,
        Scope::Rerank,
        Scope::Tokenize,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Chat => "chat",
            Scope::Completions => "completions",
            Scope::Embeddings => "embeddings",
            Scope::Models => "models",
            Scope::Responses => "responses",
            Scope::Messages => "messages",
            Scope::Rerank => "rerank",
            Scope::Tokenize => "tokenize",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}; expected chat, completions, embeddings, models, responses, messages, rerank or tokenize")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == text).ok_or_else(|| UnknownScope(text.to_string()))
    }
}

/// A set of scopes, as a bit set so the per-request check is one AND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Self {
        Scopes(Scope::ALL.iter().fold(0, |bits, scope| bits | scope.bit()))
    }

    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, UnknownScope> {
        names.iter().try_fold(Scopes(0), |set, name| Ok(Scopes(set.0 | name.as_ref().parse::<Scope>()?.bit())))
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn names(self) -> Vec<String> {
        Scope::ALL.into_iter().filter(|scope| self.contains(*scope)).map(|s| s.as_str().to_string()).collect()
    }
}

/// Client networks a credential may be used from. Empty means anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(Vec<IpNet>);

impl CidrList {
    /// Accepts networks (`10.0.0.0/8`) and bare addresses (a /32 or /128).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        entries
            .iter()
            .map(|entry| {
                let entry = entry.as_ref().trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("{entry:?} is not an IP network such as 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(CidrList)
    }

    pub fn allows(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.is_empty() || self.0.iter().any(|net| net.contains(&address))
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

/// An IPv4 client arriving on an IPv6 socket shows up as `::ffff:a.b.c.d`; match it as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_check() {
        let scopes = Scopes::parse(&["chat", "models"]).unwrap();
        assert!(scopes.contains(Scope::Chat));
        assert!(!scopes.contains(Scope::Embeddings));
        assert_eq!(scopes.names(), vec!["chat", "models"]);
        assert_eq!(Scopes::parse(&["chat", "admin"]), Err(UnknownScope("admin".into())));
        assert_eq!(Scopes::all().names().len(), 8);
    }

    #[test]
    fn cidr_list_matches_networks_addresses_and_mapped_ipv4() {
        let list = CidrList::parse(&["10.0.0.0/8", "192.168.1.7", "::1"]).unwrap();
        assert!(list.allows("10.1.2.3".parse().unwrap()));
        assert!(list.allows("192.168.1.7".parse().unwrap()));
        assert!(!list.allows("192.168.1.8".parse().unwrap()));
        assert!(list.allows("::ffff:10.9.9.9".parse().unwrap()));
        assert!(list.allows("::1".parse().unwrap()));
        assert!(CidrList::default().allows("8.8.8.8".parse().unwrap()));
        assert!(CidrList::parse(&["10.0.0.0/33"]).is_err());
    }
}
