//! Service-account tokens for pods' projected volumes, as the kubelet's token manager
//! keeps them: each `serviceAccountToken` source gets a token from the TokenRequest API
//! (`serviceaccounts/NAME/token`), for its audience and lifetime, bound to the pod, and a
//! new one once 80% of the lifetime the API gave has passed, or a day (the volume is
//! rewritten with it, as any projected source is).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};

/// (pod uid, audience, expiration seconds)
type Key = (String, String, i64);

struct Held {
    token: String,
    renew_at: Instant,
}

/// The tokens this agent holds for its pods.
#[derive(Default)]
pub struct Tokens {
    held: Mutex<HashMap<Key, Held>>,
}

// Never the tokens themselves in a debug print.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.held.lock().map(|h| h.len()).unwrap_or(0);
        f.debug_struct("Tokens").field("held", &count).finish()
    }
}

/// The audience and lifetime each projected token source of a pod asks for.
fn wanted(pod: &Pod) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        for source in volume.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(token) = &source.service_account_token {
                out.push((
                    token.audience.clone().unwrap_or_default(),
                    token.expiration_seconds.unwrap_or(3600).max(600),
                ));
            }
        }
    }
    out
}

impl Tokens {
    /// Requests the tokens a pod's volumes need that are missing or due for renewal; the
    /// time until the next renewal, if the pod has any.
    pub async fn refresh(
        &self,
        client: &kube::Client,
        pod: &Pod,
    ) -> Result<Option<Duration>, String> {
        let wanted = wanted(pod);
        if wanted.is_empty() {
            return Ok(None);
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "default".into());
        let mut next: Option<Duration> = None;
        for (audience, seconds) in wanted {
            let key = (uid.clone(), audience.clone(), seconds);
            let now = Instant::now();
            let due = {
                let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                held.get(&key).map(|h| h.renew_at)
            };
            if let Some(renew_at) = due.filter(|at| *at > now) {
                let left = renew_at - now;
                next = Some(next.map_or(left, |n| n.min(left)));
                continue;
            }
            let request = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: if audience.is_empty() {
                        Vec::new()
                    } else {
                        vec![audience.clone()]
                    },
                    expiration_seconds: Some(seconds),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(name.clone()),
                        uid: Some(uid.clone()),
                    }),
                },
                ..Default::default()
            };
            let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
            let answer: TokenRequest = api
                .create_subresource("token", &account, &PostParams::default(), &request)
                .await
                .map_err(|e| {
                    format!("cannot get a token for service account {namespace}/{account}: {e}")
                })?;
            let status = answer.status.filter(|s| !s.token.is_empty()).ok_or_else(|| {
                format!("the API answered no token for service account {namespace}/{account}")
            })?;
            // Renewed by the lifetime the API gave (it may cap what was asked, and says so in
            // the answer's spec), counted on this machine's monotonic clock from the request
            // (so a skewed wall clock does not matter), once 80% of it has passed or a day,
            // whichever comes first: the kubelet's rule.
            let asked = Duration::from_secs(u64::try_from(seconds).unwrap_or(3600));
            let given = answer
                .spec
                .expiration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(asked, Duration::from_secs);
            let renew_in = given
                .min(asked)
                .mul_f64(0.8)
                .clamp(Duration::from_secs(1), Duration::from_secs(24 * 3600));
            let token = status.token;
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, Held { token, renew_at: now + renew_in });
            next = Some(next.map_or(renew_in, |n| n.min(renew_in)));
        }
        Ok(next)
    }

    /// The token held for a pod's source.
    pub fn get(&self, uid: &str, audience: &str, seconds: i64) -> Option<String> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&(uid.to_owned(), audience.to_owned(), seconds.max(600))).map(|h| h.token.clone())
    }

    /// Forgets the tokens of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).retain(|(u, _, _), _| u != uid);
    }

    /// Keeps only the tokens of these pods.
    pub fn retain(&self, uids: &std::collections::HashSet<String>) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).retain(|(u, _, _), _| uids.contains(u));
    }
}
