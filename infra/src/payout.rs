//! The payout provider's HTTP client. One call = one POST of
//! `{"payout_id","user_id","amount","currency","destination"}` with
//! `Idempotency-Key: <payout id>` (the workflow id), so a retry after a
//! timeout or a dropped connection cannot pay twice at a provider that
//! honours the key. The answer is classified once, here:
//! - `2xx {"status":"sent","provider_ref"}`: sent, final;
//! - `2xx {"status":"failed","reason"}` or a 4xx other than 408/409/429:
//!   the provider refused, final;
//! - a timeout, a broken connection, 408, 409 (the same key is still being
//!   processed there, as the Idempotency-Key draft answers), 429, a 5xx, or
//!   a 2xx whose body is not one of the two answers: the outcome is unknown,
//!   retry with the same key. Taking a 409 as a refusal would release the
//!   funds while the provider may still pay.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What is sent. `amount` is a decimal string.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PayoutRequest {
    pub payout_id: i64,
    pub user_id: i64,
    pub amount: String,
    pub currency: String,
    pub destination: String,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayoutAnswer {
    Sent {
        provider_ref: Option<String>,
    },
    /// Final: the provider will not pay this payout.
    Failed {
        reason: String,
    },
    /// Unknown outcome; the call may be repeated with the same key.
    Transient {
        error: String,
    },
}

#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum Body {
    Sent { provider_ref: Option<String> },
    Failed { reason: Option<String> },
}

/// Classifies an HTTP answer (see the module header).
pub fn classify(status: u16, body: &[u8]) -> PayoutAnswer {
    match status {
        200..=299 => match serde_json::from_slice::<Body>(body) {
            Ok(Body::Sent { provider_ref }) => PayoutAnswer::Sent { provider_ref },
            Ok(Body::Failed { reason }) => PayoutAnswer::Failed {
                reason: reason.unwrap_or_else(|| "refused by the provider".into()),
            },
            Err(_) => PayoutAnswer::Transient {
                error: format!("unreadable {status} answer"),
            },
        },
        408 | 409 | 429 | 500..=599 => PayoutAnswer::Transient {
            error: format!("provider answered {status}"),
        },
        _ => PayoutAnswer::Failed {
            reason: format!("provider refused the request with {status}"),
        },
    }
}

#[derive(Debug, Clone)]
pub struct PayoutClient {
    http: reqwest::Client,
    url: String,
}

impl PayoutClient {
    /// A client for `url` whose calls give up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Self {
            http,
            url: url.to_owned(),
        })
    }

    /// The provider, as named in metrics and breakers: the URL's host.
    pub fn provider(&self) -> String {
        self.url
            .trim_start_matches("http://")
            .split(['/', '?'])
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn send(&self, req: &PayoutRequest) -> PayoutAnswer {
        let sent = self
            .http
            .post(&self.url)
            .header("Idempotency-Key", req.payout_id.to_string())
            .json(req)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timeout"
                } else {
                    "connection"
                };
                return PayoutAnswer::Transient {
                    error: format!("{what}: {e}"),
                };
            }
        };
        let status = response.status().as_u16();
        match response.bytes().await {
            Ok(body) => classify(status, &body),
            Err(e) => PayoutAnswer::Transient {
                error: format!("answer cut off: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_final_only_when_the_provider_says_so() {
        assert_eq!(
            classify(200, br#"{"status":"sent","provider_ref":"p-1"}"#),
            PayoutAnswer::Sent {
                provider_ref: Some("p-1".into())
            }
        );
        assert_eq!(
            classify(201, br#"{"status":"failed","reason":"closed account"}"#),
            PayoutAnswer::Failed {
                reason: "closed account".into()
            }
        );
        assert!(matches!(classify(400, b"{}"), PayoutAnswer::Failed { .. }));
        for status in [408, 409, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(status, b""), PayoutAnswer::Transient { .. }),
                "{status}"
            );
        }
        // A 2xx that says neither is not taken as a payment, nor as a refusal.
        assert!(matches!(
            classify(200, b"<html>ok</html>"),
            PayoutAnswer::Transient { .. }
        ));
        assert!(matches!(
            classify(200, br#"{"status":"pending"}"#),
            PayoutAnswer::Transient { .. }
        ));
    }

    #[test]
    fn the_provider_is_the_host() {
        let c = PayoutClient::new("http://127.0.0.1:9100/payouts", Duration::from_secs(1)).unwrap();
        assert_eq!(c.provider(), "127.0.0.1:9100");
    }
}
