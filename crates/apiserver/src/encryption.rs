//! Secrets encrypted at rest: a `Store` wrapper that seals the values of Secret keys with
//! AES-256-GCM (ring) before they reach either backend, and opens them on the way out. The
//! key is 32 random bytes in `<data-dir>/encryption.key`, made on first start. Stored
//! values carry a prefix naming the scheme, as Kubernetes' encryption providers do.

use std::path::Path;
use std::sync::Arc;

use berth_store::{BoxFuture, Error, KeyValue, ListResult, Result, Store, WatchEvent, WatchStream};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:berth:";
/// Keys whose values are sealed.
const SEALED: &str = "/registry/core/secrets/";

pub struct Encrypted {
    inner: Arc<dyn Store>,
    key: Arc<LessSafeKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encrypted")
    }
}

/// The data key: read, or made and kept with mode 0600.
pub fn load_key(dir: &Path) -> std::result::Result<[u8; 32], crate::Error> {
    let path = dir.join("encryption.key");
    if let Ok(bytes) = std::fs::read(&path) {
        return bytes.try_into().map_err(|_| {
            crate::Error::Setup(format!(
                "{} is not a 32-byte key; restore it from a backup",
                path.display()
            ))
        });
    }
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| crate::Error::Setup("no randomness for the encryption key".into()))?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| crate::Error::Setup(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(&key)
        .map_err(|e| crate::Error::Setup(format!("cannot write {}: {e}", path.display())))?;
    Ok(key)
}

impl Encrypted {
    pub fn new(
        inner: Arc<dyn Store>,
        key: &[u8; 32],
    ) -> std::result::Result<Encrypted, crate::Error> {
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| crate::Error::Setup("bad encryption key".into()))?;
        Ok(Encrypted {
            inner,
            key: Arc::new(LessSafeKey::new(unbound)),
            random: SystemRandom::new(),
        })
    }

    fn seal(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        if !key.starts_with(SEALED) {
            return Ok(value);
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| Error::Backend("no randomness for a nonce".into()))?;
        let mut data = value;
        // The key is authenticated data: a sealed value cannot be moved to another key.
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut data,
            )
            .map_err(|_| Error::Backend("cannot encrypt".into()))?;
        let mut out = PREFIX.to_vec();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    fn open(&self, kv: KeyValue) -> Result<KeyValue> {
        open_with(&self.key, kv)
    }
}

fn open_with(cipher: &LessSafeKey, mut kv: KeyValue) -> Result<KeyValue> {
    let Some(sealed) = kv.value.strip_prefix(PREFIX) else {
        // Written before encryption was on, or not a secret.
        return Ok(kv);
    };
    if sealed.len() < NONCE_LEN {
        return Err(Error::Backend(format!("{}: truncated encrypted value", kv.key)));
    }
    let (nonce, data) = sealed.split_at(NONCE_LEN);
    let nonce =
        Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Backend("bad nonce".into()))?;
    let mut data = data.to_vec();
    let plain =
        cipher.open_in_place(nonce, Aad::from(kv.key.as_bytes()), &mut data).map_err(|_| {
            Error::Backend(format!("{}: cannot decrypt (wrong encryption.key?)", kv.key))
        })?;
    kv.value = plain.to_vec();
    Ok(kv)
}

impl Store for Encrypted {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(async move { self.inner.get(key).await?.map(|kv| self.open(kv)).transpose() })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
        revision: i64,
    ) -> BoxFuture<'a, Result<ListResult>> {
        Box::pin(async move {
            let mut page = self.inner.list(prefix, start_after, limit, revision).await?;
            page.items = page.items.into_iter().map(|kv| self.open(kv)).collect::<Result<_>>()?;
            Ok(page)
        })
    }

    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let sealed = self.seal(key, value)?;
            self.inner.create(key, sealed).await
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: i64,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let sealed = self.seal(key, value)?;
            self.inner.update(key, sealed, expected).await
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<i64>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(async move { self.open(self.inner.delete(key, expected).await?) })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<WatchStream>> {
        // Only Secrets are sealed: a watch that cannot meet one reads the backend's
        // stream as it is, without a task and a channel more per event.
        if !prefix.starts_with(SEALED) && !SEALED.starts_with(prefix) {
            return self.inner.watch(prefix, after);
        }
        Box::pin(async move {
            let mut inner = self.inner.watch(prefix, after).await?;
            let (sender, receiver) = tokio::sync::mpsc::channel(1024);
            let key = self.key.clone();
            tokio::spawn(async move {
                while let Some(event) = inner.recv().await {
                    let opened = event.and_then(|e: WatchEvent| {
                        let kv = open_with(&key, e.kv)?;
                        let prev = e.prev.map(|p| open_with(&key, p)).transpose()?;
                        Ok(WatchEvent { kind: e.kind, kv, prev })
                    });
                    if sender.send(opened).await.is_err() {
                        return;
                    }
                }
            });
            Ok(receiver)
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<i64>> {
        self.inner.revision()
    }

    fn under_pressure(&self) -> bool {
        self.inner.under_pressure()
    }

    fn compact(&self, revision: i64) -> BoxFuture<'_, Result<()>> {
        self.inner.compact(revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_are_sealed_in_the_backend_and_open_through_the_wrapper() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Store> =
            Arc::new(berth_store::SqliteStore::open(&dir.path().join("db")).unwrap());
        let key = load_key(dir.path()).unwrap();
        assert_eq!(load_key(dir.path()).unwrap(), key, "the key is kept");
        let store = Encrypted::new(backend.clone(), &key).unwrap();
        let secret = "/registry/core/secrets/default/pw";
        let rev = store.create(secret, b"password=hunter2".to_vec()).await.unwrap();
        store.create("/registry/core/configmaps/default/c", b"plain".to_vec()).await.unwrap();
        let raw = backend.get(secret).await.unwrap().unwrap().value;
        assert!(raw.starts_with(PREFIX) && !raw.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            backend.get("/registry/core/configmaps/default/c").await.unwrap().unwrap().value,
            b"plain"
        );
        assert_eq!(store.get(secret).await.unwrap().unwrap().value, b"password=hunter2");
        let listed = store.list("/registry/core/secrets/", None, 0, 0).await.unwrap();
        assert_eq!(listed.items[0].value, b"password=hunter2");
        let mut watch = store.watch("/registry/core/secrets/", rev - 1).await.unwrap();
        assert_eq!(watch.recv().await.unwrap().unwrap().kv.value, b"password=hunter2");
        // A sealed value moved to another key does not open.
        let moved = "/registry/core/secrets/default/other";
        backend.create(moved, raw).await.unwrap();
        assert!(store.get(moved).await.is_err());
        // Another key cannot read it.
        let other = Encrypted::new(backend, &[7u8; 32]).unwrap();
        assert!(other.get(secret).await.unwrap_err().to_string().contains("cannot decrypt"));
    }
}
