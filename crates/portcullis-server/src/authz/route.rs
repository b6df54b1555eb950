//! Which of the proxy's routes a forwarded request is on: the authorizer lets through exactly
//! what the proxy would serve, and nothing else (an unknown path is a 404, as on the proxy).

use http::Method;
use portcullis_auth::Scope;

use crate::error::ApiError;
use crate::proxy::body::Operation;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A model call, with its body's shape.
    Inference(Operation),
    /// `GET /v1/models`.
    ModelList,
    /// `GET /v1/models/{id}`.
    Model(String),
}

impl Route {
    /// The route of `method` `path` (without its query), refused as the proxy would refuse it.
    pub fn of(method: &Method, path: &str) -> Result<Route, ApiError> {
        if let Some(operation) = Operation::at(path) {
            return if method == Method::POST {
                Ok(Route::Inference(operation))
            } else {
                Err(ApiError::MethodNotAllowed)
            };
        }
        let listing = match path.strip_prefix("/v1/models") {
            Some("") => Route::ModelList,
            Some(id) => match id.strip_prefix('/').filter(|id| !id.is_empty() && !id.contains('/')) {
                Some(id) => Route::Model(id.into()),
                None => return Err(ApiError::RouteNotFound),
            },
            None => return Err(ApiError::RouteNotFound),
        };
        if method == Method::GET { Ok(listing) } else { Err(ApiError::MethodNotAllowed) }
    }

    pub fn scope(&self) -> Scope {
        match self {
            Route::Inference(operation) => operation.scope(),
            Route::ModelList | Route::Model(_) => Scope::Models,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_proxys_routes_with_their_methods() {
        assert_eq!(Route::of(&Method::POST, "/v1/chat/completions"), Ok(Route::Inference(Operation::Chat)));
        assert_eq!(Route::of(&Method::GET, "/v1/chat/completions"), Err(ApiError::MethodNotAllowed));
        assert_eq!(Route::of(&Method::GET, "/v1/models"), Ok(Route::ModelList));
        assert_eq!(Route::of(&Method::GET, "/v1/models/gemma"), Ok(Route::Model("gemma".into())));
        assert_eq!(Route::of(&Method::DELETE, "/v1/models/gemma"), Err(ApiError::MethodNotAllowed));
        for path in ["/v1/models/a/b", "/v1/models/", "/v1/modelsx", "/v1/files", "/admin/v1/keys"] {
            assert_eq!(Route::of(&Method::GET, path), Err(ApiError::RouteNotFound), "{path}");
        }
    }
}
