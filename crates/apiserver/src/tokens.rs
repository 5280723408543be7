//! Service-account tokens: JWTs signed with ES256 by a key kept in the data directory
//! (`tls/service-account.key`), issued through `serviceaccounts/<name>/token`
//! (`kubectl create token`) and accepted as bearer tokens naming
//! `system:serviceaccount:<namespace>:<name>`.
//!
//! The claims follow Kubernetes' bound tokens: `iss`, `sub`, `aud`, `exp`, `iat`, `nbf`,
//! and `kubernetes.io` with the namespace, the service account (name, uid) and the object
//! the token is bound to. Knows nothing of storage: the server checks that the account
//! and the bound object still exist.

use std::path::Path;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{json, Value};

use crate::Error;

/// Who issues the tokens, and the audience they carry unless asked otherwise.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key_id", &self.key_id).finish()
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The object the token is bound to: (kind, name, uid).
    pub bound: Option<(String, String, String)>,
}

impl Signer {
    /// The signing key in `dir`, made on first use (PKCS#8, mode 0600).
    pub fn load(dir: &Path) -> Result<Signer, Error> {
        let path = dir.join("service-account.key");
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let document = EcdsaKeyPair::generate_pkcs8(alg, &rng)
                    .map_err(|_| Error::Setup("cannot make the service-account key".into()))?;
                crate::tls::write_private(&path, document.as_ref())?;
                document.as_ref().to_vec()
            }
            Err(e) => return Err(Error::Setup(format!("cannot read {}: {e}", path.display()))),
        };
        let key = EcdsaKeyPair::from_pkcs8(alg, &pkcs8, &rng).map_err(|e| {
            Error::Setup(format!("{} is not a P-256 PKCS#8 key: {e}", path.display()))
        })?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let key_id = b64(&digest.as_ref()[..16]);
        Ok(Signer { key, rng, key_id })
    }

    /// A token for a service account, valid from `now` for `seconds`.
    pub fn issue(
        &self,
        claims: &Claims,
        audiences: &[String],
        now: i64,
        seconds: i64,
    ) -> Result<String, Error> {
        let header = json!({"alg": "ES256", "kid": self.key_id, "typ": "JWT"});
        let mut kubernetes = json!({
            "namespace": claims.namespace,
            "serviceaccount": {"name": claims.name, "uid": claims.uid},
        });
        if let Some((kind, name, uid)) = &claims.bound {
            kubernetes[kind.to_lowercase()] = json!({"name": name, "uid": uid});
        }
        let audiences: Vec<&str> = if audiences.is_empty() {
            vec![ISSUER]
        } else {
            audiences.iter().map(String::as_str).collect()
        };
        let payload = json!({
            "aud": audiences, "exp": now + seconds, "iat": now, "nbf": now, "iss": ISSUER,
            "jti": berth_stdx::random::uuid().map_err(|e| Error::Setup(format!("cannot read random bytes from the OS: {e}")))?,
            "kubernetes.io": kubernetes,
            "sub": format!("system:serviceaccount:{}:{}", claims.namespace, claims.name),
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| Error::Setup("cannot sign a token".into()))?;
        Ok(format!("{signing_input}.{}", b64(signature.as_ref())))
    }

    /// The public key as a JSON Web Key Set (`/openid/v1/jwks`), for verifiers elsewhere.
    pub fn jwks(&self) -> Value {
        // An uncompressed P-256 point: 0x04, then X and Y of 32 bytes each.
        let point = self.key.public_key().as_ref();
        let (x, y) = point.get(1..).unwrap_or_default().split_at(point.len().saturating_sub(1) / 2);
        json!({"keys": [{"use": "sig", "kty": "EC", "kid": self.key_id, "crv": "P-256", "alg": "ES256", "x": b64(x), "y": b64(y)}]})
    }

    /// The claims of a token this signer made for this API that has not expired, or
    /// `None`.
    pub fn verify(&self, token: &str, now: i64) -> Option<Claims> {
        self.verify_for(token, now, &[ISSUER]).map(|(claims, _)| claims)
    }

    /// The claims of a token this signer made that has not expired and whose audiences
    /// meet `wanted`, with the audiences they share; `None` otherwise.
    pub fn verify_for(
        &self,
        token: &str,
        now: i64,
        wanted: &[&str],
    ) -> Option<(Claims, Vec<String>)> {
        let mut parts = token.split('.');
        let (header, payload, sig) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let decode =
            |part: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok();
        let header: Value = serde_json::from_slice(&decode(header)?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        let signing_input = &token[..token.len() - sig.len() - 1];
        public.verify(signing_input.as_bytes(), &decode(sig)?).ok()?;
        let claims: Value = serde_json::from_slice(&decode(payload)?).ok()?;
        let (exp, nbf) = (claims["exp"].as_i64()?, claims["nbf"].as_i64().unwrap_or(0));
        if now >= exp || now + 60 < nbf || claims["iss"] != ISSUER {
            return None;
        }
        // A token made for another audience (`kubectl create token --audience vault`) is
        // that audience's, not a credential for this API.
        let audiences = match &claims["aud"] {
            Value::String(one) => vec![one.as_str()],
            list => list.as_array()?.iter().filter_map(Value::as_str).collect(),
        };
        let shared: Vec<String> =
            wanted.iter().filter(|w| audiences.contains(w)).map(|w| (*w).to_owned()).collect();
        if shared.is_empty() {
            return None;
        }
        let kubernetes = &claims["kubernetes.io"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let bound = ["pod", "secret", "node"].iter().find_map(|kind| {
            let object = kubernetes.get(*kind)?;
            let kind = match *kind {
                "pod" => "Pod",
                "secret" => "Secret",
                _ => "Node",
            };
            Some((kind.to_owned(), text(&object["name"])?, text(&object["uid"])?))
        });
        Some((
            Claims {
                namespace: text(&kubernetes["namespace"])?,
                name: text(&kubernetes["serviceaccount"]["name"])?,
                uid: text(&kubernetes["serviceaccount"]["uid"])?,
                bound,
            },
            shared,
        ))
    }
}

/// The user a service account's token names.
pub fn user(claims: &Claims) -> crate::rbac::User {
    crate::rbac::User {
        name: format!("system:serviceaccount:{}:{}", claims.namespace, claims.name),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", claims.namespace),
            "system:authenticated".into(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims { namespace: "ns".into(), name: "robot".into(), uid: "u-1".into(), bound: None }
    }

    #[test]
    fn tokens_verify_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load(dir.path()).unwrap();
        let token = signer.issue(&claims(), &[], 1000, 600).unwrap();
        assert_eq!(signer.verify(&token, 1001), Some(claims()));
        assert_eq!(signer.verify(&token, 1600), None, "expired");
        // The same key is read back after a restart.
        let again = Signer::load(dir.path()).unwrap();
        assert_eq!(again.verify(&token, 1001), Some(claims()));
        assert_eq!(user(&claims()).name, "system:serviceaccount:ns:robot");
        let bound = Claims { bound: Some(("Pod".into(), "p".into(), "pu".into())), ..claims() };
        let token = signer.issue(&bound, &[ISSUER.into(), "api".into()], 1000, 600).unwrap();
        assert_eq!(signer.verify(&token, 1001), Some(bound));
        // Made for someone else: not a credential here.
        let elsewhere = signer.issue(&claims(), &["vault".into()], 1000, 600).unwrap();
        assert_eq!(signer.verify(&elsewhere, 1001), None);
    }

    #[test]
    fn the_key_set_carries_the_public_point() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load(dir.path()).unwrap();
        let set = signer.jwks();
        let key = &set["keys"][0];
        let decode = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v.as_str().unwrap()).unwrap()
        };
        let (x, y) = (decode(&key["x"]), decode(&key["y"]));
        assert_eq!((x.len(), y.len()), (32, 32));
        let mut point = vec![4u8];
        point.extend(x);
        point.extend(y);
        assert_eq!(point, signer.key.public_key().as_ref());
        // Tokens name the key they were signed with.
        let token = signer.issue(&claims(), &[], 1000, 600).unwrap();
        let header = decode(&json!(token.split('.').next().unwrap()));
        let header: Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header["kid"], key["kid"]);
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load(dir.path()).unwrap();
        let other = Signer::load(tempfile::tempdir().unwrap().path()).unwrap();
        let token = signer.issue(&claims(), &[], 1000, 600).unwrap();
        assert_eq!(other.verify(&token, 1001), None, "another key");
        // A payload swapped under the signature.
        let forged_claims = Claims { name: "admin".into(), ..claims() };
        let forged = other.issue(&forged_claims, &[], 1000, 600).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let forged_parts: Vec<&str> = forged.split('.').collect();
        let swapped = format!("{}.{}.{}", parts[0], forged_parts[1], parts[2]);
        assert_eq!(signer.verify(&swapped, 1001), None);
        for junk in ["", "a.b", "a.b.c", "a.b.c.d", "....", "eyJhbGciOiJub25lIn0.e30."] {
            assert_eq!(signer.verify(junk, 1001), None, "{junk}");
        }
    }
}
