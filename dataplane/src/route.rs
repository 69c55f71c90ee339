//! Routing: a request's method and target → the API operation and where its deployment
//! name comes from (the Azure path segment or the body's `model`).
//!
//! Pure and allocation-free: the result borrows from the request target.

/// The API operations Sluice serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `POST …/chat/completions`
    ChatCompletions,
    /// `POST …/completions`
    Completions,
    /// `POST …/embeddings`
    Embeddings,
    /// `POST …/responses`
    Responses,
    /// `GET /v1/models` (answered by the gateway from its own deployment list)
    Models,
}

impl Operation {
    /// The path suffix the operation has on every API style, e.g. `chat/completions`.
    pub fn path_suffix(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "chat/completions",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Responses => "responses",
            Operation::Models => "models",
        }
    }

    fn from_suffix(suffix: &str) -> Option<Self> {
        Some(match suffix {
            "chat/completions" => Operation::ChatCompletions,
            "completions" => Operation::Completions,
            "embeddings" => Operation::Embeddings,
            "responses" => Operation::Responses,
            "models" => Operation::Models,
            _ => return None,
        })
    }

    /// The HTTP method the operation takes.
    pub fn method(self) -> &'static str {
        match self {
            Operation::Models => "GET",
            _ => "POST",
        }
    }
}

/// Where the deployment a request is for is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentRef<'a> {
    /// In the path: `/openai/deployments/{deployment}/…`.
    Path(&'a str),
    /// In the JSON body's `model` field (OpenAI and Azure `/openai/v1/` paths).
    BodyModel,
    /// No deployment: the gateway answers (`GET /v1/models`).
    None,
}

/// A matched route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// The operation.
    pub operation: Operation,
    /// Where the deployment name comes from.
    pub deployment: DeploymentRef<'a>,
}

/// Why a request matched no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// No such path → 404.
    NotFound,
    /// The path exists but takes another method → 405.
    MethodNotAllowed(&'static str),
    /// An Azure deployments path without `api-version` → 400.
    MissingApiVersion,
}

/// Matches `method` and `target` (path and query as sent) to a route.
pub fn route<'a>(method: &str, target: &'a str) -> Result<Route<'a>, RouteError> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let (operation, deployment) = if let Some(rest) = path.strip_prefix("/v1/") {
        (
            Operation::from_suffix(rest).ok_or(RouteError::NotFound)?,
            DeploymentRef::BodyModel,
        )
    } else if let Some(rest) = path.strip_prefix("/openai/v1/") {
        (
            Operation::from_suffix(rest).ok_or(RouteError::NotFound)?,
            DeploymentRef::BodyModel,
        )
    } else if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        let (name, suffix) = rest.split_once('/').ok_or(RouteError::NotFound)?;
        let op = Operation::from_suffix(suffix).ok_or(RouteError::NotFound)?;
        if name.is_empty() || op == Operation::Models || op == Operation::Responses {
            return Err(RouteError::NotFound);
        }
        if !has_api_version(query) {
            return Err(RouteError::MissingApiVersion);
        }
        (op, DeploymentRef::Path(name))
    } else {
        return Err(RouteError::NotFound);
    };
    let deployment = match operation {
        Operation::Models => DeploymentRef::None,
        _ => deployment,
    };
    if method != operation.method() {
        return Err(RouteError::MethodNotAllowed(operation.method()));
    }
    Ok(Route {
        operation,
        deployment,
    })
}

fn has_api_version(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            pair.strip_prefix("api-version=")
                .is_some_and(|v| !v.is_empty())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_paths_route_by_body_model() {
        for (path, op) in [
            ("/v1/chat/completions", Operation::ChatCompletions),
            ("/v1/completions", Operation::Completions),
            ("/v1/embeddings", Operation::Embeddings),
            ("/v1/responses", Operation::Responses),
            ("/openai/v1/chat/completions", Operation::ChatCompletions),
        ] {
            let r = route("POST", path).unwrap();
            assert_eq!(r.operation, op, "{path}");
            assert_eq!(r.deployment, DeploymentRef::BodyModel);
        }
    }

    #[test]
    fn models_is_a_get_answered_by_the_gateway() {
        let r = route("GET", "/v1/models").unwrap();
        assert_eq!(r.operation, Operation::Models);
        assert_eq!(r.deployment, DeploymentRef::None);
        assert_eq!(
            route("POST", "/v1/models"),
            Err(RouteError::MethodNotAllowed("GET"))
        );
    }

    #[test]
    fn azure_deployment_paths_need_api_version() {
        let r = route(
            "POST",
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        )
        .unwrap();
        assert_eq!(r.operation, Operation::ChatCompletions);
        assert_eq!(r.deployment, DeploymentRef::Path("gpt-4o"));
        let r = route(
            "POST",
            "/openai/deployments/emb/embeddings?x=1&api-version=2024-10-21",
        )
        .unwrap();
        assert_eq!(r.deployment, DeploymentRef::Path("emb"));
        assert_eq!(
            route("POST", "/openai/deployments/gpt-4o/chat/completions"),
            Err(RouteError::MissingApiVersion)
        );
        assert_eq!(
            route(
                "POST",
                "/openai/deployments/gpt-4o/chat/completions?api-version="
            ),
            Err(RouteError::MissingApiVersion)
        );
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in [
            "/",
            "/v1/",
            "/v1/chat",
            "/v2/chat/completions",
            "/openai/deployments//chat/completions?api-version=1",
            "/openai/deployments/x?api-version=1",
            "/openai/deployments/x/models?api-version=1",
            "/v1/chat/completions/extra",
        ] {
            assert_eq!(route("POST", path), Err(RouteError::NotFound), "{path}");
        }
        assert_eq!(
            route("GET", "/v1/chat/completions"),
            Err(RouteError::MethodNotAllowed("POST"))
        );
    }
}
