//! The etcd v3 backend (`--datastore-endpoint=http://HOST:PORT`), through `etcd-client`.
//! Compare-and-swap is an etcd transaction on `mod_revision` (or `create_revision == 0`
//! for a create); watches start at a revision and report compaction.

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use crate::{
    prefix_end, BoxFuture, Error, EventKind, KeyValue, ListResult, Result, Store, WatchEvent,
    WatchStream,
};

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdStore")
    }
}

fn backend(err: etcd_client::Error) -> Error {
    match &err {
        etcd_client::Error::GRpcStatus(status) if status.message().contains("compacted") => {
            Error::Compacted { requested: 0, compacted: 0 }
        }
        etcd_client::Error::GRpcStatus(status) if status.message().contains("future rev") => {
            Error::FutureRevision { requested: 0, current: 0 }
        }
        _ => Error::Backend(err.to_string()),
    }
}

fn kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (`http://127.0.0.1:2379`, comma-separated for several).
    pub async fn connect(endpoints: &str) -> Result<EtcdStore> {
        let list: Vec<&str> =
            endpoints.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        let client = Client::connect(list, None)
            .await
            .map_err(|e| Error::Backend(format!("cannot connect to etcd at {endpoints}: {e}")))?;
        Ok(EtcdStore { client })
    }

    async fn current(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut client = self.client.clone();
        let response = client.get(key, None).await.map_err(backend)?;
        Ok(response.kvs().first().map(kv))
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(self.current(key))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
        revision: i64,
    ) -> BoxFuture<'a, Result<ListResult>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let from = match start_after {
                Some(after) => format!("{after}\0"),
                None => prefix.to_owned(),
            };
            let mut options = GetOptions::new()
                .with_range(prefix_end(prefix))
                .with_sort(SortTarget::Key, SortOrder::Ascend);
            if limit > 0 {
                options = options.with_limit(limit as i64);
            }
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = client.get(from, Some(options)).await.map_err(|e| match backend(e) {
                Error::Compacted { .. } => Error::Compacted { requested: revision, compacted: 0 },
                Error::FutureRevision { .. } => {
                    Error::FutureRevision { requested: revision, current: 0 }
                }
                other => other,
            })?;
            let at = if revision > 0 {
                revision
            } else {
                response.header().map(|h| h.revision()).unwrap_or(0)
            };
            Ok(ListResult {
                items: response.kvs().iter().map(kv).collect(),
                revision: at,
                more: response.more(),
            })
        })
    }

    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value, None)]);
            let response = client.txn(txn).await.map_err(backend)?;
            if !response.succeeded() {
                return Err(Error::AlreadyExists { key: key.to_owned() });
            }
            Ok(response.header().map(|h| h.revision()).unwrap_or(0))
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: i64,
    ) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let txn = Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
                .and_then([TxnOp::put(key, value, None)])
                .or_else([TxnOp::get(key, None)]);
            let response = client.txn(txn).await.map_err(backend)?;
            if response.succeeded() {
                return Ok(response.header().map(|h| h.revision()).unwrap_or(0));
            }
            let actual = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => Some(get.kvs().first().map(|k| k.mod_revision())),
                _ => None,
            });
            match actual.flatten() {
                Some(actual) => Err(Error::Conflict { key: key.to_owned(), expected, actual }),
                None => Err(Error::NotFound { key: key.to_owned() }),
            }
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<i64>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let compare = match expected {
                Some(e) => Compare::mod_revision(key, CompareOp::Equal, e),
                None => Compare::create_revision(key, CompareOp::Greater, 0),
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()))])
                .or_else([TxnOp::get(key, None)]);
            let response = client.txn(txn).await.map_err(backend)?;
            let revision = response.header().map(|h| h.revision()).unwrap_or(0);
            let succeeded = response.succeeded();
            for op in response.op_responses() {
                match op {
                    TxnOpResponse::Delete(deleted) if succeeded => {
                        if let Some(prev) = deleted.prev_kvs().first() {
                            let mut gone = kv(prev);
                            gone.mod_revision = revision;
                            return Ok(gone);
                        }
                    }
                    TxnOpResponse::Get(get) => {
                        return match get.kvs().first() {
                            Some(current) => Err(Error::Conflict {
                                key: key.to_owned(),
                                expected: expected.unwrap_or(0),
                                actual: current.mod_revision(),
                            }),
                            None => Err(Error::NotFound { key: key.to_owned() }),
                        };
                    }
                    _ => {}
                }
            }
            Err(Error::NotFound { key: key.to_owned() })
        })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<WatchStream>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let options = WatchOptions::new()
                .with_range(prefix_end(prefix))
                .with_start_revision(after + 1)
                .with_prev_key();
            let mut stream = client.watch(prefix, Some(options)).await.map_err(backend)?;
            let (sender, receiver) = mpsc::channel(1024);
            tokio::spawn(async move {
                loop {
                    let message = match stream.message().await {
                        Ok(Some(message)) => message,
                        Ok(None) => return,
                        Err(err) => {
                            let _ = sender.send(Err(backend(err))).await;
                            return;
                        }
                    };
                    if message.compact_revision() > 0 {
                        let _ = sender
                            .send(Err(Error::Compacted {
                                requested: after + 1,
                                compacted: message.compact_revision(),
                            }))
                            .await;
                        return;
                    }
                    if message.canceled() {
                        let _ = sender
                            .send(Err(Error::Backend(format!(
                                "watch canceled: {}",
                                message.cancel_reason()
                            ))))
                            .await;
                        return;
                    }
                    for event in message.events() {
                        let Some(current) = event.kv() else { continue };
                        let mut current = kv(current);
                        let prev = event.prev_kv().map(kv);
                        let kind = match event.event_type() {
                            EventType::Put => EventKind::Put,
                            EventType::Delete => EventKind::Delete,
                        };
                        if kind == EventKind::Delete {
                            // etcd's delete event carries an empty value; the last one is in prev.
                            if let Some(prev) = &prev {
                                current.value = prev.value.clone();
                                current.create_revision = prev.create_revision;
                            }
                        }
                        let event = WatchEvent {
                            kind,
                            kv: current,
                            prev: if kind == EventKind::Put { prev } else { None },
                        };
                        if sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                }
            });
            Ok(receiver)
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<i64>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let response = client.get("\0", None).await.map_err(backend)?;
            Ok(response.header().map(|h| h.revision()).unwrap_or(0))
        })
    }

    fn compact(&self, revision: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            client.compact(revision, None).await.map_err(|e| match backend(e) {
                Error::Compacted { .. } => Error::Compacted { requested: revision, compacted: 0 },
                Error::FutureRevision { .. } => {
                    Error::FutureRevision { requested: revision, current: 0 }
                }
                other => other,
            })?;
            Ok(())
        })
    }
}
