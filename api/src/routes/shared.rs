//! Types every resource's bodies share: amounts, wallet kinds, the empty
//! body, the problem document, the Idempotency-Key header, timestamps.

use chrono::{DateTime, SecondsFormat, Utc};
use domain::idempotency::validate_client_key;
use poem_openapi::Object;
use poem_openapi::error::ParseParamError;
use poem_openapi::types::{ParseError, ParseFromJSON, ParseFromParameter, ParseResult};
use serde_json::Value;

/// RFC 3339, UTC, microseconds: `2026-11-21T12:00:00.123456Z`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Plain decimal notation with at most 8 decimals and at least one non-zero
/// digit, so that the schema itself refuses `"0"`, `"0.0"` and `"-1"`. The
/// upper bound (`92233720368.54775807`) is beyond a readable regex and is
/// checked by `domain::money::Amount`.
pub const DECIMAL_PATTERN: &str = concat!(
    r"^(?:[0-9]*[1-9][0-9]*(?:\.[0-9]{1,8})?",
    r"|0+\.(?:[1-9][0-9]{0,7}|0[1-9][0-9]{0,6}|0{2}[1-9][0-9]{0,5}|0{3}[1-9][0-9]{0,4}",
    r"|0{4}[1-9][0-9]{0,3}|0{5}[1-9][0-9]{0,2}|0{6}[1-9][0-9]?|0{7}[1-9]))$"
);

/// An amount in a request: a JSON string in plain decimal notation. Unlike a
/// plain `String` field, a JSON number is refused here (floats lose cents);
/// the value itself is parsed by `domain::money::Amount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecimalString(pub String);

/// The OpenAPI type of a string newtype: required, named as the type, a
/// string schema inline with its description, pattern and any further
/// `field: value` of `MetaSchema`, written as its string.
macro_rules! string_type {
    ($ty:ident, $description:expr, $pattern:expr $(, $field:ident: $value:expr)* $(,)?) => {
        impl poem_openapi::types::Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }

            fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
                poem_openapi::registry::MetaSchemaRef::Inline(Box::new(
                    poem_openapi::registry::MetaSchema {
                        description: Some($description),
                        pattern: Some(String::from($pattern)),
                        $($field: $value,)*
                        ..poem_openapi::registry::MetaSchema::new("string")
                    },
                ))
            }

            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl poem_openapi::types::ToJSON for $ty {
            fn to_json(&self) -> Option<serde_json::Value> {
                Some(serde_json::Value::String(self.0.clone()))
            }
        }
    };
}
pub(crate) use string_type;

string_type!(
    DecimalString,
    "Decimal string, e.g. \"100.5\": at most 8 decimals, no sign, no exponent, > 0, \
     at most \"92233720368.54775807\". JSON numbers are refused.",
    DECIMAL_PATTERN,
    max_length: Some(40),
    example: Some(Value::String("100.5".into())),
);

impl ParseFromJSON for DecimalString {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => Ok(Self(s)),
            Some(Value::Number(_)) => Err(ParseError::custom(
                "amounts are decimal strings such as \"100.5\"; JSON numbers are refused",
            )),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

/// An enum of the HTTP contract that mirrors a domain enum variant for
/// variant: the OpenAPI enum (its attributes as given), and `From` both ways,
/// so a request's value becomes the domain's and a response's comes from it.
macro_rules! mirror_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident = $domain:ty { $($variant:ident),+ $(,)? }
    ) => {
        #[derive(poem_openapi::Enum, Clone, Copy, Debug, PartialEq, Eq)]
        $(#[$meta])*
        pub enum $name {
            $($variant),+
        }

        impl From<$name> for $domain {
            fn from(v: $name) -> Self {
                match v {
                    $($name::$variant => Self::$variant),+
                }
            }
        }

        impl From<$domain> for $name {
            fn from(v: $domain) -> Self {
                type Domain = $domain;
                match v {
                    $(Domain::$variant => Self::$variant),+
                }
            }
        }
    };
}
pub(crate) use mirror_enum;

mirror_enum! {
    /// `live` or `demo`.
    #[oai(rename_all = "lowercase")]
    pub enum WalletKind = domain::ledger::wallets::WalletKind { Live, Demo }
}

/// The body of a page of a list route, `NAME { items, next_before_id }`, and
/// its conversion from the domain's page of `VIEW`s, each item through
/// `ITEM: From<&VIEW>`.
macro_rules! page_body {
    ($name:ident, $item:ty, $view:ty) => {
        #[derive(poem_openapi::Object, Debug, Clone)]
        pub struct $name {
            pub items: Vec<$item>,
            /// Pass as `before_id` for the next (older) page; null on the last page.
            #[oai(nullable)]
            pub next_before_id: Option<i64>,
        }

        impl From<&domain::page::Page<$view>> for $name {
            fn from(page: &domain::page::Page<$view>) -> Self {
                Self {
                    items: page.items.iter().map(<$item>::from).collect(),
                    next_before_id: page.next_before_id,
                }
            }
        }
    };
}
pub(crate) use page_body;

/// No fields: `{}`.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct EmptyRequest {}

/// An error, RFC 9457.
#[derive(Object, Debug, Clone)]
pub struct Problem {
    #[oai(rename = "type")]
    pub ty: String,
    pub title: String,
    pub status: u16,
    /// Stable, machine-readable.
    pub code: String,
    pub detail: String,
    pub request_id: String,
    /// With `resource_locked`: the busy resources.
    #[oai(skip_serializing_if_is_none)]
    pub conflicts: Option<Vec<String>>,
    /// `hold_not_active` only: the status the hold ended with (`captured`,
    /// `voided` or `expired`).
    #[oai(skip_serializing_if_is_none)]
    pub hold_status: Option<String>,
    /// `workflow_state` only: the status the workflow is in.
    #[oai(skip_serializing_if_is_none)]
    pub workflow_status: Option<String>,
}

/// The free-text fields (`reference`, `destination`, `payment_method`,
/// `email`, `referral_code`) refuse control characters with this pattern: a
/// NUL cannot be stored by PostgreSQL, and none belongs in a reference.
/// The field attributes repeat it literally (the derive takes literals
/// only); a test holds them to this one.
pub const PLAIN_TEXT_PATTERN: &str = r"^[^\x00-\x1F\x7F-\x9F]*$";

/// The `Idempotency-Key` request header: 1 to 255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const HEADER: &'static str = "Idempotency-Key";

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether poem-openapi refused a request because this header was absent
    /// (the contract answers that with `idempotency_key_missing`, not with a
    /// generic parse error).
    pub fn is_missing(err: &ParseParamError) -> bool {
        err.name == Self::HEADER
            && err.reason == ParseError::<Self>::expected_input().into_message()
    }
}

string_type!(
    IdempotencyKey,
    "1 to 255 printable ASCII characters, chosen by the client per operation; \
     400 `idempotency_key_missing` without it.",
    r"^[\x20-\x7E]{1,255}$",
    min_length: Some(1),
    max_length: Some(255),
);

impl ParseFromParameter for IdempotencyKey {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        validate_client_key(value)
            .map_err(|_| ParseError::custom("must be 1 to 255 printable ASCII characters"))?;
        Ok(Self(value.to_owned()))
    }
}

/// The form of the `Lock-Token` header as documented: a lock id (at most 64
/// visible ASCII characters), a colon, the fencing token (a positive
/// integer). `domain::locks::fencing::LockToken` parses it; a test holds
/// every value this pattern admits to that parser.
pub const LOCK_TOKEN_PATTERN: &str = r"^[\x21-\x7E]{1,64}:[1-9][0-9]{0,17}$";

/// The `Lock-Token` request header, as the client sent it: the money route
/// parses it (400 `invalid_request` when it is not `<lock_id>:<fencing_token>`)
/// and checks it inside the money transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockTokenHeader(pub String);

string_type!(
    LockTokenHeader,
    "`<lock_id>:<fencing_token>`: the lock's id (at most 64 visible ASCII \
     characters), a colon, its fencing token (a positive integer).",
    LOCK_TOKEN_PATTERN,
);

impl ParseFromParameter for LockTokenHeader {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Ok(Self(value.to_owned()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use domain::money::{Amount, MoneyError};
    use poem_openapi::Validator;
    use poem_openapi::validation::Pattern;

    /// Every string over `alphabet` up to `len` characters.
    pub(crate) fn strings(alphabet: &[char], len: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..len {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn decimal_pattern_accepts_exactly_what_amount_parses() {
        // The schema leaves only the upper bound to the server.
        let mut corpus = strings(&['0', '1', '.'], 9);
        corpus.extend(
            [
                "0.00000001",
                "0.000000001",
                "0.00000000",
                "00.10000000",
                "92233720368.54775807",
                "92233720368.54775808",
                "100.5",
                "1e3",
                "-1",
                "+1",
                " 1",
            ]
            .map(String::from),
        );
        for s in corpus {
            let parsed = Amount::parse(&s);
            let expected = parsed.is_ok() || parsed == Err(MoneyError::TooLarge);
            assert_eq!(matches(DECIMAL_PATTERN, &s), expected, "{s:?}: {parsed:?}");
        }
    }

    #[test]
    fn plain_text_pattern_refuses_control_characters() {
        for ok in ["", "psp-1", "iban:DE00 1234", "Zürich €", "ann@example.com"] {
            assert!(matches(PLAIN_TEXT_PATTERN, ok), "{ok:?}");
        }
        for bad in ["a\u{0}b", "\t", "line\n", "\u{7f}", "\u{85}", "\u{9f}"] {
            assert!(!matches(PLAIN_TEXT_PATTERN, bad), "{bad:?}");
        }
    }

    #[test]
    fn idempotency_key_parses_printable_ascii_and_knows_when_it_is_missing() {
        assert_eq!(
            IdempotencyKey::parse_from_parameter("dep-0001")
                .map(|k| k.0)
                .ok(),
            Some("dep-0001".to_owned())
        );
        for bad in ["", "caf\u{e9}", "a\u{1}", &"k".repeat(256)] {
            assert!(
                IdempotencyKey::parse_from_parameter(bad).is_err(),
                "{bad:?}"
            );
        }
        let missing = IdempotencyKey::parse_from_parameters(std::iter::empty::<&str>())
            .err()
            .map(ParseError::into_message)
            .unwrap_or_default();
        assert!(IdempotencyKey::is_missing(&ParseParamError {
            name: IdempotencyKey::HEADER,
            reason: missing,
        }));
        let invalid = IdempotencyKey::parse_from_parameters(["a\u{1}"])
            .err()
            .map(ParseError::into_message)
            .unwrap_or_default();
        assert!(!IdempotencyKey::is_missing(&ParseParamError {
            name: IdempotencyKey::HEADER,
            reason: invalid,
        }));
    }

    /// Through the regex engine poem-openapi validates patterns with.
    pub(crate) fn matches(pattern: &'static str, s: &str) -> bool {
        Pattern::new(pattern).check(&s)
    }

    #[test]
    fn every_lock_token_the_pattern_admits_parses() {
        use domain::locks::fencing::LockToken;
        let mut corpus = strings(&['a', '-', ':', '0', '7'], 6);
        corpus.extend(
            [
                "0b5e8a52-3c4f-4d0e-9a8f-1b2c3d4e5f60:17",
                &format!("{}:1", "x".repeat(64)),
                &format!("{}:1", "x".repeat(65)),
                "id:999999999999999999",
                "id:9223372036854775807",
                "id:+5",
                " id:5",
            ]
            .map(String::from),
        );
        let mut admitted = 0;
        for s in corpus {
            if matches(LOCK_TOKEN_PATTERN, &s) {
                admitted += 1;
                assert!(LockToken::parse(&s).is_ok(), "{s:?}");
            }
        }
        assert!(matches(
            LOCK_TOKEN_PATTERN,
            "0b5e8a52-3c4f-4d0e-9a8f-1b2c3d4e5f60:17"
        ));
        assert!(admitted > 1_000, "{admitted}");
    }
}
