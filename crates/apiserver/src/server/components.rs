//! ComponentStatus (`kubectl get componentstatuses`): the store (`etcd-0`, answered by a
//! read), and the scheduler and controller manager, healthy when this process runs them.

use super::*;

impl State {
    async fn component_statuses(&self) -> Vec<Value> {
        let store_ok = self.store.get("/registry/core/namespaces/default").await;
        let condition = |healthy: bool, message: String| json!([{"type": "Healthy", "status": if healthy { "True" } else { "False" }, "message": message}]);
        let mut items = Vec::new();
        for part in ["controller-manager", "scheduler"] {
            let running = self.components.iter().any(|c| c == part);
            let message = if running {
                "ok".to_owned()
            } else {
                format!("not running in this server (--disable-{part})")
            };
            items.push((part.to_owned(), condition(running, message)));
        }
        let store = match &store_ok {
            Ok(_) => condition(true, "ok".into()),
            Err(err) => condition(false, err.to_string()),
        };
        items.push(("etcd-0".to_owned(), store));
        items
            .into_iter()
            .map(|(name, conditions)| {
                json!({"kind": "ComponentStatus", "apiVersion": "v1",
                    "metadata": {"name": name, "creationTimestamp": null}, "conditions": conditions})
            })
            .collect()
    }
}

/// `GET componentstatuses[/NAME]`.
pub(super) async fn answer(
    state: &State,
    method: &Method,
    name: Option<&str>,
    accept: &str,
) -> Response<Body> {
    if method != Method::GET {
        return error_response(&ApiError::new(
            405,
            "MethodNotAllowed",
            "only get and list are allowed",
        ));
    }
    let mut items = state.component_statuses().await;
    if let Some(name) = name {
        items.retain(|i| i["metadata"]["name"] == name);
    }
    if let (true, Some(resource)) =
        (accept.contains("as=Table"), resources::find("", "v1", "componentstatuses"))
    {
        if name.is_none() || !items.is_empty() {
            return json_response(200, &objects::table(resource, &items, 0, false));
        }
    }
    match name {
        None => json_response(
            200,
            &json!({"kind": "ComponentStatusList", "apiVersion": "v1", "metadata": {}, "items": items}),
        ),
        Some(name) => match items.into_iter().find(|i| i["metadata"]["name"] == name) {
            Some(item) => json_response(200, &item),
            None => match resources::find("", "v1", "componentstatuses") {
                Some(resource) => error_response(&ApiError::not_found(resource, name)),
                None => error_response(&ApiError::no_such_path()),
            },
        },
    }
}
