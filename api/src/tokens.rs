//! Bearer JWTs (HS256): the three roles, the principal a token names, and
//! minting and verifying tokens with the configured secret.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Service,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "service" => Some(Self::Service),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Service => "service",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub role: Role,
}

impl Principal {
    /// The identity idempotency keys are scoped to.
    pub fn id(&self) -> String {
        format!("{}:{}", self.role.as_str(), self.sub)
    }

    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }

    /// A `user` may act only on itself; other roles as listed.
    pub fn require_self_or(&self, user_id: i64, roles: &[Role]) -> Result<(), ApiError> {
        if self.role == Role::User && self.sub == user_id.to_string() {
            return Ok(());
        }
        self.require(roles)
    }
}

/// Seconds of clock skew a token's expiry is given, as `Validation` has it.
const LEEWAY_SECS: u64 = 5;

/// Tokens verified at most; past it the cache starts again empty.
pub const CACHED: usize = 10_000;

#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Tokens whose signature was verified, by their whole text, with their
    /// principal and expiry. A client sends the same token with every
    /// request, and checking its signature again (base64, HMAC-SHA256, JSON)
    /// cost more than the rest of a wallet read's own work in the profile
    /// (`bench/profile-read.txt`). A hit still checks the expiry.
    verified: Arc<RwLock<Verified>>,
}

/// A verified token's principal and expiry (seconds since the epoch), by
/// the token's text.
type Verified = HashMap<Box<str>, (Principal, u64)>;

impl Tokens {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            verified: Arc::default(),
        }
    }

    pub fn mint(
        &self,
        sub: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let exp = (chrono::Utc::now() + ttl).timestamp().max(0) as u64;
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            exp,
        };
        self.sign(&claims)
    }

    /// `claims` signed with this key, whatever their expiry.
    fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
    }

    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let cached = self
            .verified
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned();
        if let Some((principal, exp)) = cached
            && now <= exp + LEEWAY_SECS
        {
            return Ok(principal);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        if data.claims.sub.is_empty() {
            return Err(ApiError::unauthorized("invalid token: empty subject"));
        }
        let principal = Principal {
            sub: data.claims.sub,
            role: data.claims.role,
        };
        let mut verified = self.verified.write().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= CACHED {
            verified.clear();
        }
        verified.insert(token.into(), (principal.clone(), data.claims.exp));
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::http::StatusCode;

    fn tokens() -> Tokens {
        Tokens::new("0123456789abcdef0123456789abcdef")
    }

    /// A token of user 42, valid for a minute.
    fn user_token(tokens: &Tokens) -> String {
        tokens
            .mint("42", Role::User, Duration::from_secs(60))
            .unwrap()
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let tokens = tokens();
        let t = user_token(&tokens);
        assert_eq!(
            tokens.verify(&t).unwrap(),
            Principal {
                sub: "42".into(),
                role: Role::User
            }
        );
        let other = Tokens::new("another-secret-another-secret-xx");
        assert_eq!(other.verify(&t).unwrap_err().code, "unauthorized");
        assert!(tokens.verify("not.a.token").is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let tokens = tokens();
        let claims = Claims {
            sub: "1".into(),
            role: Role::Admin,
            exp: 1_000,
        };
        let t = tokens.sign(&claims).unwrap();
        assert_eq!(
            tokens.verify(&t).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn a_cached_token_still_expires_and_the_cache_is_bounded() {
        let tokens = tokens();
        let t = user_token(&tokens);
        let first = tokens.verify(&t).unwrap();
        assert_eq!(tokens.verify(&t).unwrap(), first);
        assert!(tokens.verified.read().unwrap().contains_key(t.as_str()));
        // a token verified while valid whose expiry has passed since: the
        // hit checks the expiry, and the signature check refuses it
        let past = chrono::Utc::now().timestamp() as u64 - LEEWAY_SECS - 1;
        let claims = Claims {
            sub: "42".into(),
            role: Role::User,
            exp: past,
        };
        let expired = tokens.sign(&claims).unwrap();
        tokens
            .verified
            .write()
            .unwrap()
            .insert(expired.clone().into(), (first, past));
        assert_eq!(tokens.verify(&expired).unwrap_err().code, "unauthorized");
        // tampered or foreign tokens never enter it
        let other = Tokens::new("another-secret-another-secret-xx");
        assert!(other.verify(&t).is_err());
        assert!(other.verified.read().unwrap().is_empty());
        for i in 0..CACHED + 5 {
            let t = tokens
                .mint(&i.to_string(), Role::User, Duration::from_secs(60))
                .unwrap();
            tokens.verify(&t).unwrap();
        }
        assert!(tokens.verified.read().unwrap().len() <= CACHED);
    }

    #[test]
    fn ownership_rules() {
        let user = Principal {
            sub: "7".into(),
            role: Role::User,
        };
        assert!(
            user.require_self_or(7, &[Role::Service, Role::Admin])
                .is_ok()
        );
        assert_eq!(
            user.require_self_or(8, &[Role::Service, Role::Admin])
                .unwrap_err()
                .code,
            "forbidden"
        );
        let service = Principal {
            sub: "backoffice".into(),
            role: Role::Service,
        };
        assert!(
            service
                .require_self_or(8, &[Role::Service, Role::Admin])
                .is_ok()
        );
        assert!(service.require_self_or(8, &[Role::Admin]).is_err());
        // a service whose name happens to be a number is still not that user
        let numeric_service = Principal {
            sub: "8".into(),
            role: Role::Service,
        };
        assert!(numeric_service.require_self_or(8, &[Role::Admin]).is_err());
    }
}
