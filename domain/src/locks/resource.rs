//! What a lock request may name: resources, owners, transaction types and
//! the bounds of its numbers, each checked once at the edge of the service.

use crate::error::{DomainError, DomainResult};

pub const MAX_RESOURCES: usize = 50;
pub const MAX_RESOURCE_LEN: usize = 200;
pub const MAX_OWNER_LEN: usize = 200;
pub const MAX_TYPE_LEN: usize = 100;

pub const MIN_TTL_MS: u64 = 1_000;
pub const MAX_TTL_MS: u64 = 600_000;
pub const DEFAULT_TTL_MS: u64 = 30_000;
/// The default of a reservation: a lock on more than one resource (a cart).
pub const DEFAULT_RESERVATION_TTL_MS: u64 = 300_000;
pub const DEFAULT_PRIORITY: u8 = 5;
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 60_000;
pub const MAX_QUEUE_TIMEOUT_MS: u64 = 3_600_000;

/// The lease a request gets when it names none: 30 s for one resource, 5
/// minutes for a reservation of several.
pub fn default_ttl_ms(resources: usize) -> u64 {
    if resources > 1 {
        DEFAULT_RESERVATION_TTL_MS
    } else {
        DEFAULT_TTL_MS
    }
}

/// `^[a-z][a-z0-9_]*(:[A-Za-z0-9_.-]+)*$`, at most 200 characters: a kind in
/// lower case, then colon-separated parts (`trade:42:BTCUSDT:sell:snipe123`).
pub fn is_valid_resource(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_RESOURCE_LEN {
        return false;
    }
    let mut parts = name.split(':');
    let kind = parts.next().unwrap_or_default();
    let mut chars = kind.bytes();
    if !chars.next().is_some_and(|c| c.is_ascii_lowercase()) {
        return false;
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
        return false;
    }
    parts.all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    })
}

/// One to fifty distinct valid names, returned sorted: the order in which
/// every transaction locks them, so two requests never wait on each other
/// in opposite orders.
pub fn normalize_resources(names: &[String]) -> DomainResult<Vec<String>> {
    if names.is_empty() || names.len() > MAX_RESOURCES {
        return Err(DomainError::invalid(
            "resources",
            format!("name 1 to {MAX_RESOURCES} resources"),
        ));
    }
    if let Some(bad) = names.iter().find(|n| !is_valid_resource(n)) {
        return Err(DomainError::invalid(
            "resources",
            format!(
                "{bad:?} is not a resource name (^[a-z][a-z0-9_]*(:[A-Za-z0-9_.-]+)*$, at most {MAX_RESOURCE_LEN} characters)"
            ),
        ));
    }
    let mut sorted = names.to_vec();
    sorted.sort();
    if sorted.windows(2).any(|w| matches!(w, [a, b] if a == b)) {
        return Err(DomainError::invalid(
            "resources",
            "each resource may be named once",
        ));
    }
    Ok(sorted)
}

/// An owner: `user:42`, `service:backoffice`, or a name a service gives,
/// 1 to 200 of `[A-Za-z0-9_.:@-]`.
pub fn validate_owner(owner: &str) -> DomainResult<()> {
    validate_word("owner_id", owner, MAX_OWNER_LEN, "_.:@-")
}

/// The kind of an owner, from its prefix: `user`, `service` or `admin` for
/// a principal, `external` for a name a service chose.
pub fn owner_type(owner: &str) -> &'static str {
    match owner.split_once(':').map(|(kind, _)| kind) {
        Some("user") => "user",
        Some("service") => "service",
        Some("admin") => "admin",
        _ => "external",
    }
}

pub fn validate_transaction_type(kind: &str) -> DomainResult<()> {
    validate_word("transaction_type", kind, MAX_TYPE_LEN, "_.:-")
}

/// `value` in `field`: 1 to `max` of ASCII letters, digits and the
/// characters of `extra`.
fn validate_word(field: &'static str, value: &str, max: usize, extra: &str) -> DomainResult<()> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || extra.as_bytes().contains(&c));
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!("1 to {max} of [A-Za-z0-9{extra}]"),
        ))
    }
}

pub fn validate_ttl(ttl_ms: u64) -> DomainResult<()> {
    if (MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "ttl_ms",
            format!("must be within {MIN_TTL_MS}..={MAX_TTL_MS}"),
        ))
    }
}

pub fn validate_priority(priority: u8) -> DomainResult<()> {
    if (1..=10).contains(&priority) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "priority",
            "must be within 1 (highest) ..= 10 (lowest)",
        ))
    }
}

pub fn validate_queue_timeout(ms: u64) -> DomainResult<()> {
    if (1..=MAX_QUEUE_TIMEOUT_MS).contains(&ms) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "queue_timeout_ms",
            format!("must be within 1..={MAX_QUEUE_TIMEOUT_MS}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_of_several_resources_is_leased_longer_by_default() {
        assert_eq!(default_ttl_ms(1), 30_000);
        assert_eq!(default_ttl_ms(2), 300_000);
        assert_eq!(default_ttl_ms(MAX_RESOURCES), 300_000);
    }

    #[test]
    fn resource_names_follow_the_contract_pattern() {
        for ok in [
            "trade:42:BTCUSDT:sell:snipe123",
            "item:sku-991",
            "a",
            "wallet_7",
            "x:A.b-c_D",
            "k9:1:2:3",
        ] {
            assert!(is_valid_resource(ok), "{ok} should be valid");
        }
        for bad in [
            "",
            "Trade:1",
            "1trade",
            "_x",
            "trade:",
            "trade::1",
            "trade:a b",
            "trade-x:1",
            "trade:1/2",
            "tr\u{e9}de",
            ":x",
        ] {
            assert!(!is_valid_resource(bad), "{bad:?} should be invalid");
        }
        let longest = format!("r:{}", "x".repeat(MAX_RESOURCE_LEN - 2));
        assert!(is_valid_resource(&longest));
        assert!(!is_valid_resource(&format!("{longest}x")));
    }

    #[test]
    fn resources_are_sorted_distinct_and_bounded() {
        let names = vec!["item:b".to_owned(), "item:a".to_owned()];
        assert_eq!(
            normalize_resources(&names).unwrap(),
            vec!["item:a".to_owned(), "item:b".to_owned()]
        );
        assert!(normalize_resources(&[]).is_err());
        assert!(normalize_resources(&["item:a".into(), "item:a".into()]).is_err());
        let fifty: Vec<String> = (0..50).map(|i| format!("item:{i}")).collect();
        assert!(normalize_resources(&fifty).is_ok());
        let fifty_one: Vec<String> = (0..51).map(|i| format!("item:{i}")).collect();
        assert!(normalize_resources(&fifty_one).is_err());
        assert!(normalize_resources(&["BAD".into()]).is_err());
    }

    #[test]
    fn owners_types_and_bounds() {
        assert_eq!(owner_type("user:42"), "user");
        assert_eq!(owner_type("service:backoffice"), "service");
        assert_eq!(owner_type("admin:root"), "admin");
        assert_eq!(owner_type("bot-7"), "external");
        assert!(validate_owner("user:42").is_ok());
        assert!(validate_owner("").is_err());
        assert!(validate_owner("a b").is_err());
        assert!(validate_transaction_type("trade.open").is_ok());
        assert!(validate_transaction_type("").is_err());
        assert!(validate_ttl(999).is_err());
        assert!(validate_ttl(1_000).is_ok());
        assert!(validate_ttl(600_000).is_ok());
        assert!(validate_ttl(600_001).is_err());
        assert!(validate_priority(0).is_err());
        assert!(validate_priority(1).is_ok());
        assert!(validate_priority(10).is_ok());
        assert!(validate_priority(11).is_err());
        assert!(validate_queue_timeout(0).is_err());
        assert!(validate_queue_timeout(60_000).is_ok());
    }
}
