//! The backends and pools a config document declares, read from its TOML for the operator's
//! backend commands (which names exist, which pools a backend is in, with what weight). The
//! data plane's compiler has already judged the document; this reads only names and numbers.

/// One backend's place in one deployment's pool, as the document writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The deployment.
    pub deployment: String,
    /// The backend.
    pub backend: String,
    /// Its weight (default 1).
    pub weight: u32,
    /// Its priority group (default 0).
    pub priority: u32,
}

/// What a document declares: backends (name, kind) in document order, and every pool place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// `[[backend]]` names and kinds.
    pub backends: Vec<(String, String)>,
    /// `[[deployment]]` pool members.
    pub places: Vec<Place>,
    /// `[[subscription]]` names and products, in document order.
    pub subscriptions: Vec<(String, String)>,
}

impl Catalog {
    /// Reads `toml`; a document that does not parse declares nothing.
    pub fn of(toml: &str) -> Self {
        let Ok(doc) = toml.parse::<toml::Table>() else {
            return Self::default();
        };
        let tables = |key: &str| {
            doc.get(key)
                .and_then(toml::Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(toml::Value::as_table)
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        let text = |t: &toml::Table, k: &str| {
            t.get(k)
                .and_then(toml::Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let number = |t: &toml::Table, k: &str, default: u32| {
            t.get(k)
                .and_then(toml::Value::as_integer)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(default)
        };
        let backends = tables("backend")
            .iter()
            .map(|b| (text(b, "name"), text(b, "kind")))
            .collect();
        let mut places = Vec::new();
        for d in tables("deployment") {
            let deployment = text(&d, "name");
            for m in d
                .get("backends")
                .and_then(toml::Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(m) = m.as_table() {
                    places.push(Place {
                        deployment: deployment.clone(),
                        backend: text(m, "backend"),
                        weight: number(m, "weight", 1),
                        priority: number(m, "priority", 0),
                    });
                }
            }
        }
        let subscriptions = tables("subscription")
            .iter()
            .map(|s| (text(s, "name"), text(s, "product")))
            .collect();
        Self {
            backends,
            places,
            subscriptions,
        }
    }

    /// Whether the document declares backend `name`.
    pub fn has_backend(&self, name: &str) -> bool {
        self.backends.iter().any(|(n, _)| n == name)
    }

    /// The product of subscription `name`, if the document declares it.
    pub fn product_of(&self, name: &str) -> Option<&str> {
        self.subscriptions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_str())
    }

    /// Whether deployment `deployment`'s pool holds `backend`.
    pub fn in_pool(&self, backend: &str, deployment: &str) -> bool {
        self.places
            .iter()
            .any(|p| p.backend == backend && p.deployment == deployment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_and_pools_are_read_with_their_defaults() {
        let catalog = Catalog::of(
            "[[backend]]\nname = \"a\"\nkind = \"mock\"\n[[backend]]\nname = \"b\"\nkind = \"azure\"\n\
             [[deployment]]\nname = \"d\"\nbackends = [{ backend = \"a\" }, { backend = \"b\", weight = 3, priority = 1 }]\n",
        );
        assert_eq!(
            catalog.backends,
            [("a".into(), "mock".into()), ("b".into(), "azure".into())]
        );
        assert_eq!(
            catalog.places[1],
            Place {
                deployment: "d".into(),
                backend: "b".into(),
                weight: 3,
                priority: 1
            }
        );
        assert!(catalog.has_backend("a") && !catalog.has_backend("c"));
        assert!(catalog.in_pool("a", "d") && !catalog.in_pool("a", "e"));
        assert_eq!(Catalog::of("not toml ["), Catalog::default());
    }
}
