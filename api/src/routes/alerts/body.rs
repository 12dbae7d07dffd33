//! Bodies of the Alerts route.

use poem_openapi::{Enum, Object};

use crate::alerts::{self, Rule};
use crate::routes::shared::timestamp;

/// The rule an alert comes from; stable names, also the `alertname` of
/// `deploy/prometheus/ledger.rules.yml`.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertName {
    #[oai(rename = "high_error_rate")]
    HighErrorRate,
    #[oai(rename = "high_timeout_rate")]
    HighTimeoutRate,
    #[oai(rename = "high_latency_p99")]
    HighLatencyP99,
    #[oai(rename = "recovery_failures")]
    RecoveryFailures,
    #[oai(rename = "deadlock_retries")]
    DeadlockRetries,
    #[oai(rename = "circuit_breaker_open")]
    CircuitBreakerOpen,
}

impl From<Rule> for AlertName {
    fn from(r: Rule) -> Self {
        match r {
            Rule::HighErrorRate => Self::HighErrorRate,
            Rule::HighTimeoutRate => Self::HighTimeoutRate,
            Rule::HighLatencyP99 => Self::HighLatencyP99,
            Rule::RecoveryFailures => Self::RecoveryFailures,
            Rule::DeadlockRetries => Self::DeadlockRetries,
            Rule::CircuitBreakerOpen => Self::CircuitBreakerOpen,
        }
    }
}

#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum AlertSeverity {
    Critical,
    Warning,
}

impl From<alerts::Severity> for AlertSeverity {
    fn from(s: alerts::Severity) -> Self {
        match s {
            alerts::Severity::Critical => Self::Critical,
            alerts::Severity::Warning => Self::Warning,
        }
    }
}

/// An alert firing now: `value` is above `threshold`.
#[derive(Object, Debug, Clone)]
pub struct Alert {
    pub name: AlertName,
    pub severity: AlertSeverity,
    /// Over the last 5 minutes: a ratio (0.06 = 6 %) for the error and
    /// timeout rates, seconds for the p99 latency, a count for recovery
    /// failures and deadlock retries; 1 for an open circuit breaker.
    pub value: f64,
    /// The rule fires while `value` is above this.
    pub threshold: f64,
    /// The provider whose circuit breaker is open; only on
    /// `circuit_breaker_open`.
    #[oai(skip_serializing_if_is_none)]
    pub provider: Option<String>,
    /// When this alert started firing (it has fired at every evaluation
    /// since), RFC 3339 UTC.
    pub since: String,
}

impl From<&alerts::Alert> for Alert {
    fn from(a: &alerts::Alert) -> Self {
        Self {
            name: a.firing.rule.into(),
            severity: a.firing.rule.severity().into(),
            value: a.firing.value,
            threshold: a.firing.threshold,
            provider: a.firing.provider.clone(),
            since: timestamp(a.since),
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct AlertList {
    /// The alerts firing now; empty when all is well.
    pub alerts: Vec<Alert>,
}
