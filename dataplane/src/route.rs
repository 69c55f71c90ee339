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
    /// `GET …/models` (answered by the gateway from its own deployment list)
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

    /// Its name in audit records, metrics and product config: `chat`, `completions`,
    /// `embeddings`, `responses`, `models`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "chat",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Responses => "responses",
            Operation::Models => "models",
        }
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
    /// In the JSON body's `model` field (OpenAI, Azure `/openai/v1/` and Azure
    /// `/openai/responses` paths).
    BodyModel,
    /// No deployment: the gateway answers (`GET …/models`).
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
    /// An Azure path (deployment or resource level, not `/openai/v1/`) without a non-empty
    /// `api-version` → 400.
    MissingApiVersion,
}

/// Matches `method` and `target` (path and query as sent) to a route.
///
/// The forms, for `{op}` one of `chat/completions`, `completions`, `embeddings`,
/// `responses` (POST) or `models` (GET):
///
/// | form | deployment | `api-version` |
/// | --- | --- | --- |
/// | `/v1/{op}` (OpenAI) | body `model` | not needed |
/// | `/openai/v1/{op}` (Azure v1 API) | body `model` | not needed |
/// | `/openai/deployments/{d}/{op}`, `{op}` not `models` (Azure) | the path | required |
/// | `/openai/responses`, `/openai/models` (Azure resource level) | body `model` / none | required |
///
/// `models` never names a deployment (the gateway answers it, [`DeploymentRef::None`]).
/// The Azure resource-level forms are the ones the `AzureOpenAI` SDK clients send for
/// operations outside their deployments list (`responses.create()`, `models.list()`; see
/// `_deployments_endpoints` in openai-python `lib/azure.py`). `/openai/deployments/{d}/responses`
/// is what the same client sends when its `base_url` names a deployment; the path names
/// the deployment unambiguously, so it is served. Not served (404):
/// `/openai/deployments/{d}/models` and resource-level `/openai/chat/completions`,
/// `/openai/completions`, `/openai/embeddings` (the SDKs put those under a deployment).
///
/// The query is ignored except that Azure forms (not `/openai/v1/`) need a non-empty
/// `api-version` parameter, as the Azure OpenAI data-plane REST API requires
/// (`MissingApiVersion` → 400, checked before the method). One trailing `/` after the
/// operation is accepted (`/v1/chat/completions/`): a lenient choice that is safe because
/// the upstream path is rebuilt from the [`Operation`], never copied. Any other path is
/// [`RouteError::NotFound`]; a known path with another method is
/// [`RouteError::MethodNotAllowed`].
pub fn route<'a>(method: &str, target: &'a str) -> Result<Route<'a>, RouteError> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = path.strip_suffix('/').unwrap_or(path);
    let op = |suffix: &str| Operation::from_suffix(suffix).ok_or(RouteError::NotFound);
    let (operation, deployment, azure) = if let Some(rest) = path
        .strip_prefix("/v1/")
        .or_else(|| path.strip_prefix("/openai/v1/"))
    {
        (op(rest)?, DeploymentRef::BodyModel, false)
    } else if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        let (name, suffix) = rest.split_once('/').ok_or(RouteError::NotFound)?;
        let op = op(suffix)?;
        if name.is_empty() || op == Operation::Models {
            return Err(RouteError::NotFound);
        }
        (op, DeploymentRef::Path(name), true)
    } else if let Some(rest) = path.strip_prefix("/openai/") {
        let op = op(rest)?;
        if !matches!(op, Operation::Responses | Operation::Models) {
            return Err(RouteError::NotFound);
        }
        (op, DeploymentRef::BodyModel, true)
    } else {
        return Err(RouteError::NotFound);
    };
    if azure && !has_api_version(query) {
        return Err(RouteError::MissingApiVersion);
    }
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

/// The value of the first `api-version` query parameter of the request target `target`
/// (its bytes), as sent (not decoded), if present, not empty and UTF-8. Bytes, so the
/// audit record reads it without validating the whole target again.
pub fn api_version(target: &[u8]) -> Option<&str> {
    let query = &target[memchr::memchr(b'?', target)? + 1..];
    query
        .split(|&b| b == b'&')
        .find_map(|pair| pair.strip_prefix(b"api-version="))
        .filter(|v| !v.is_empty())
        .and_then(|v| std::str::from_utf8(v).ok())
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
    fn api_version_is_the_first_api_version_parameter_as_sent() {
        for (target, expected) in [
            (
                &b"/openai/deployments/d/chat/completions?api-version=2024-10-21"[..],
                Some("2024-10-21"),
            ),
            (b"/x?a=1&api-version=2024-06-01&b=2", Some("2024-06-01")),
            (b"/x?api-version=a%20b&api-version=c", Some("a%20b")),
            (b"/x?api-version=&api-version=c", None),
            (b"/x?xapi-version=1", None),
            (b"/x?api-version=\xff", None),
            (b"/x/api-version=1", None),
            (b"/x?", None),
        ] {
            assert_eq!(
                api_version(target),
                expected,
                "{}",
                String::from_utf8_lossy(target)
            );
        }
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
    fn every_form_of_every_operation_routes() {
        use Operation::*;
        const V: &str = "?api-version=2025-03-01-preview";
        let ops = [ChatCompletions, Completions, Embeddings, Responses, Models];
        for op in ops {
            let body_or_none = if op == Models {
                DeploymentRef::None
            } else {
                DeploymentRef::BodyModel
            };
            let s = op.path_suffix();
            let mut forms = vec![
                (format!("/v1/{s}"), body_or_none),
                (format!("/openai/v1/{s}"), body_or_none),
                (format!("/openai/v1/{s}{V}"), body_or_none),
            ];
            if op != Models {
                forms.push((
                    format!("/openai/deployments/dep-1/{s}{V}"),
                    DeploymentRef::Path("dep-1"),
                ));
            }
            if matches!(op, Responses | Models) {
                forms.push((format!("/openai/{s}{V}"), body_or_none));
            }
            for (target, deployment) in forms {
                let slashed = match target.split_once('?') {
                    Some((p, q)) => format!("{p}/?{q}"),
                    None => format!("{target}/"),
                };
                for t in [target.as_str(), slashed.as_str()] {
                    let r = route(op.method(), t).unwrap_or_else(|e| panic!("{t}: {e:?}"));
                    assert_eq!(r.operation, op, "{t}");
                    assert_eq!(r.deployment, deployment, "{t}");
                }
            }
        }
    }

    #[test]
    fn azure_resource_level_forms_need_api_version_and_v1_does_not() {
        let r = route("POST", "/openai/responses?api-version=2025-03-01-preview").unwrap();
        assert_eq!(r.operation, Operation::Responses);
        assert_eq!(r.deployment, DeploymentRef::BodyModel);
        let r = route("GET", "/openai/models?x=1&api-version=2024-10-21").unwrap();
        assert_eq!(r.operation, Operation::Models);
        assert_eq!(r.deployment, DeploymentRef::None);
        for (method, target) in [
            ("POST", "/openai/responses"),
            ("POST", "/openai/responses?api-version="),
            ("POST", "/openai/responses/"),
            ("GET", "/openai/models"),
            ("GET", "/openai/models?version=1"),
            ("POST", "/openai/deployments/d/responses"),
        ] {
            assert_eq!(
                route(method, target),
                Err(RouteError::MissingApiVersion),
                "{target}"
            );
        }
        // The v1 API takes no api-version; one sent anyway is ignored.
        assert!(route("POST", "/openai/v1/responses").is_ok());
        assert!(route("GET", "/openai/v1/models?api-version=preview").is_ok());
        assert_eq!(
            route("POST", "/openai/models?api-version=1"),
            Err(RouteError::MethodNotAllowed("GET"))
        );
        assert_eq!(
            route("GET", "/openai/responses?api-version=1"),
            Err(RouteError::MethodNotAllowed("POST"))
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
            "/v1/chat/completions//",
            "/v1//chat/completions",
            "/openai/chat/completions?api-version=1",
            "/openai/completions?api-version=1",
            "/openai/embeddings?api-version=1",
            "/openai/responses/resp_1?api-version=1",
            "/openai/v1?api-version=1",
            "/openai/v1/?api-version=1",
            "/openai/deployments/x/?api-version=1",
            "/openai/deployments/x/responses/input_items?api-version=1",
            "/openai?api-version=1",
            "/openai/?api-version=1",
            "/openai/v1/deployments/x/chat/completions",
        ] {
            assert_eq!(route("POST", path), Err(RouteError::NotFound), "{path}");
        }
        assert_eq!(
            route("GET", "/v1/chat/completions"),
            Err(RouteError::MethodNotAllowed("POST"))
        );
    }
}
