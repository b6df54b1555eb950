//! Which listener a connection or request came in on.

use portcullis_audit::AuditKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Clients' model calls (`server.listen`).
    Proxy,
    /// Operators: the admin API, metrics (`admin.listen`).
    Admin,
    /// Gateways asking whether their clients' requests may pass (`authz.listen`).
    Authz,
}

impl ListenerKind {
    /// Its name in logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Proxy => "proxy",
            ListenerKind::Admin => "admin",
            ListenerKind::Authz => "authz",
        }
    }

    /// What its requests are in the audit log.
    pub fn audit_kind(self) -> AuditKind {
        match self {
            ListenerKind::Proxy => AuditKind::Request,
            ListenerKind::Admin => AuditKind::Admin,
            ListenerKind::Authz => AuditKind::Authz,
        }
    }
}
