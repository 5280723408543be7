//! The request decoders against hostile input: random bytes, mutated protobuf bodies,
//! random selectors and patches. Whatever comes in, they answer with a value or an error,
//! never a panic or a hang. (`fuzz/` has the same entry points for cargo-fuzz.)

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)] // test code: failing loudly is the point

use berth_apiserver::{patch, selector, server};
use serde_json::{json, Value};

/// A small deterministic generator (xorshift), so failures reproduce.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn valid_protobuf() -> Vec<u8> {
    // A ConfigMap named "x" in "default" with data a=1, framed as kubectl frames it.
    fn field(n: u8, data: &[u8], out: &mut Vec<u8>) {
        out.push(n << 3 | 2);
        out.push(data.len() as u8);
        out.extend_from_slice(data);
    }
    let mut meta = Vec::new();
    field(1, b"x", &mut meta);
    field(3, b"default", &mut meta);
    let mut entry = Vec::new();
    field(1, b"a", &mut entry);
    field(2, b"1", &mut entry);
    let mut cm = Vec::new();
    field(1, &meta, &mut cm);
    field(2, &entry, &mut cm);
    let mut type_meta = Vec::new();
    field(1, b"v1", &mut type_meta);
    field(2, b"ConfigMap", &mut type_meta);
    let mut body = b"k8s\0".to_vec();
    field(1, &type_meta, &mut body);
    field(2, &cm, &mut body);
    body
}

#[test]
fn bodies_never_panic() {
    let valid = valid_protobuf();
    let decoded = server::decode_body("application/vnd.kubernetes.protobuf", &valid).unwrap();
    assert_eq!(decoded["data"]["a"], "1");
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for round in 0..20_000 {
        let body = match round % 4 {
            3 => {
                // Every kind's message table, fed random fields.
                const KINDS: &[&str] = &[
                    "Namespace",
                    "ConfigMap",
                    "Secret",
                    "ServiceAccount",
                    "Deployment",
                    "Service",
                    "Job",
                    "CronJob",
                    "Role",
                    "ClusterRole",
                    "RoleBinding",
                    "ClusterRoleBinding",
                    "TokenRequest",
                    "SelfSubjectReview",
                    "SelfSubjectAccessReview",
                ];
                let kind = KINDS[random.below(KINDS.len())];
                let mut type_meta = vec![0x0a, 2, b'v', b'1', 0x12, kind.len() as u8];
                type_meta.extend_from_slice(kind.as_bytes());
                let mut body = b"k8s\0".to_vec();
                body.push(0x0a);
                body.push(type_meta.len() as u8);
                body.extend(type_meta);
                let raw = random.bytes(120);
                body.push(0x12);
                body.push(raw.len() as u8);
                body.extend(raw);
                body
            }
            0 => random.bytes(256),
            1 => {
                let mut body = valid.clone();
                for _ in 0..=random.below(4) {
                    let at = random.below(body.len());
                    body[at] = random.next() as u8;
                }
                body.truncate(random.below(body.len() + 1).max(4));
                body
            }
            _ => {
                let mut body = b"k8s\0".to_vec();
                body.extend(random.bytes(64));
                body
            }
        };
        let _ = server::decode_body("application/vnd.kubernetes.protobuf", &body);
        let _ = server::decode_body("application/json", &body);
    }
}

#[test]
fn selectors_never_panic() {
    let alphabet: Vec<char> = "ab=!,() innotin/.-_xyz0\u{e9}".chars().collect();
    let mut random = Random(42);
    let labels = json!({"a": "b", "x": "y"});
    for _ in 0..20_000 {
        let len = random.below(24);
        let text: String = (0..len).map(|_| alphabet[random.below(alphabet.len())]).collect();
        if let Ok(parsed) = selector::LabelSelector::parse(&text) {
            let _ = parsed.matches(labels.as_object());
        }
        if let Ok(parsed) = selector::FieldSelector::parse(&text, &["spec.nodeName"]) {
            let _ = parsed.matches(&labels);
        }
    }
}

fn random_json(random: &mut Random, depth: usize) -> Value {
    match random.below(if depth > 3 { 4 } else { 7 }) {
        0 => Value::Null,
        1 => json!(random.below(100)),
        2 => json!(["a", "b", "/", "~1", "-", "0", "name"][random.below(7)]),
        3 => json!(random.below(2) == 0),
        4 => Value::Array((0..random.below(4)).map(|_| random_json(random, depth + 1)).collect()),
        _ => {
            let keys = [
                "name",
                "$patch",
                "$retainKeys",
                "containers",
                "ports",
                "spec",
                "op",
                "path",
                "value",
                "from",
                "$setElementOrder/containers",
                "$deleteFromPrimitiveList/x",
            ];
            let mut map = serde_json::Map::new();
            for _ in 0..random.below(4) {
                map.insert(
                    keys[random.below(keys.len())].to_owned(),
                    random_json(random, depth + 1),
                );
            }
            Value::Object(map)
        }
    }
}

#[test]
fn patches_never_panic() {
    let mut random = Random(7);
    for _ in 0..20_000 {
        let mut target = random_json(&mut random, 0);
        let doc = random_json(&mut random, 0);
        let _ = patch::json_patch(&target, &doc);
        patch::merge_patch(&mut target.clone(), &doc);
        patch::strategic_merge(&mut target, &doc);
    }
}

#[test]
fn tokens_and_repeated_keys_never_panic() {
    use berth_apiserver::{schema, tokens};
    let dir = tempfile::tempdir().unwrap();
    let signer = tokens::Signer::load(dir.path()).unwrap();
    let claims =
        tokens::Claims { namespace: "ns".into(), name: "sa".into(), uid: "u".into(), bound: None };
    let good = signer.issue(&claims, &[], 1000, 600).unwrap();
    let mut random = Random(7);
    let alphabet: Vec<char> = "eyJ.-_AZaz09{}\":,[]".chars().collect();
    for round in 0..5_000 {
        let token: String = if round % 2 == 0 {
            // The good token with characters changed: never accepted, never a panic.
            let mut bytes = good.clone().into_bytes();
            for _ in 0..=random.below(3) {
                let at = random.below(bytes.len());
                bytes[at] = alphabet[random.below(alphabet.len())] as u8;
            }
            String::from_utf8(bytes).unwrap()
        } else {
            (0..random.below(80)).map(|_| alphabet[random.below(alphabet.len())]).collect()
        };
        if token != good {
            assert!(signer.verify(&token, 1001).is_none(), "a changed token was accepted: {token}");
        }
        let _ = schema::parse_noting_duplicates(token.as_bytes());
        let mut value = random_json(&mut random, 0);
        let _ = schema::unknown_fields(("apps", "v1", "Deployment"), &mut value, round % 3 == 0);
    }
}
