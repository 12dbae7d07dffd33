//! The lock's `idempotency_key`: SHA-256 of who does what to which
//! resources. Two requests for the same work get the same key however they
//! order their resources or the keys of their data, so a second process
//! deciding the same trade is answered with the first one's lock.

use sha2::{Digest, Sha256};

use crate::idempotency::canonical_json;

/// `resources` must be sorted (as `resource::normalize_resources` returns
/// them). Each part is length-prefixed, so no two different requests
/// concatenate to the same bytes.
pub fn dedupe_key(
    owner: &str,
    resources: &[String],
    transaction_type: &str,
    transaction_data: &serde_json::Value,
) -> String {
    let mut hasher = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    part(owner.as_bytes());
    part(&(resources.len() as u64).to_be_bytes());
    for r in resources {
        part(r.as_bytes());
    }
    part(transaction_type.as_bytes());
    part(canonical_json(transaction_data).as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::resource::normalize_resources;
    use serde_json::json;

    fn key(owner: &str, resources: &[&str], kind: &str, data: serde_json::Value) -> String {
        let names: Vec<String> = resources.iter().map(|r| (*r).to_owned()).collect();
        dedupe_key(owner, &normalize_resources(&names).unwrap(), kind, &data)
    }

    #[test]
    fn order_of_resources_and_of_json_keys_does_not_matter() {
        let a = key(
            "user:1",
            &["item:b", "item:a"],
            "cart",
            json!({"x": 1, "y": {"b": 2, "a": [1, {"d": 4, "c": 3}]}}),
        );
        let b = key(
            "user:1",
            &["item:a", "item:b"],
            "cart",
            serde_json::from_str(r#"{"y":{"a":[1,{"c":3,"d":4}],"b":2},"x":1}"#).unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn every_part_counts() {
        let base = key("user:1", &["item:a"], "cart", json!({"n": 1}));
        assert_ne!(base, key("user:2", &["item:a"], "cart", json!({"n": 1})));
        assert_ne!(base, key("user:1", &["item:b"], "cart", json!({"n": 1})));
        assert_ne!(base, key("user:1", &["item:a"], "trade", json!({"n": 1})));
        assert_ne!(base, key("user:1", &["item:a"], "cart", json!({"n": 2})));
        // array order is meaningful data, unlike object key order
        assert_ne!(
            key("user:1", &["item:a"], "cart", json!([1, 2])),
            key("user:1", &["item:a"], "cart", json!([2, 1]))
        );
        // no ambiguity between parts
        assert_ne!(
            key("user:1", &["item:a", "item:b"], "c", json!(null)),
            key("user:1", &["item:a"], "item:bc", json!(null))
        );
    }
}
