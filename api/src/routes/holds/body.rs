//! Bodies of the Holds routes. Amounts are rendered as decimal strings.

use domain::ledger::holds::{self, HoldView};
use domain::money::format_units;
use poem_openapi::Object;

use crate::routes::shared::{DecimalString, WalletKind, mirror_enum, timestamp};

mirror_enum! {
    /// `held` (active), `captured`, `voided` or `expired`.
    #[oai(rename_all = "lowercase")]
    pub enum HoldStatus = holds::HoldStatus { Held, Captured, Voided, Expired }
}

/// Reserve `amount` of the wallet's free balance for `ttl_ms`.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct CreateHoldRequest {
    pub user_id: i64,
    pub wallet: WalletKind,
    /// At most the free balance (`balance - margin - held`).
    pub amount: DecimalString,
    /// How long the funds stay reserved, in milliseconds: 1 to 604,800,000
    /// (7 days), default 300,000 (5 minutes).
    #[oai(validator(minimum(value = "1"), maximum(value = "604800000")))]
    pub ttl_ms: Option<u64>,
    /// The client's reference, e.g. the payout it reserves funds for.
    #[oai(validator(max_length = 255, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"))]
    pub reference: Option<String>,
}

/// Capture `amount` of the hold (all of it when absent); the rest is
/// released.
#[derive(Object, Debug, Clone)]
#[oai(deny_unknown_fields)]
pub struct CaptureHoldRequest {
    /// At most the held amount; 422 `capture_exceeds_hold` above it.
    pub amount: Option<DecimalString>,
}

#[derive(Object, Debug, Clone)]
pub struct Hold {
    pub id: i64,
    pub user_id: i64,
    pub wallet: String,
    /// Reserved when the hold was made.
    pub amount: String,
    /// What a capture took out of the wallet; `0` unless captured.
    pub captured_amount: String,
    /// A hold past its `expires_at` reads `expired` at once.
    pub status: HoldStatus,
    #[oai(nullable)]
    pub reference: Option<String>,
    pub expires_at: String,
    pub created_at: String,
    /// When it was captured or voided, or its `expires_at` when it expired;
    /// null while active.
    #[oai(nullable)]
    pub finished_at: Option<String>,
}

impl From<&HoldView> for Hold {
    fn from(h: &HoldView) -> Self {
        Self {
            id: h.id,
            user_id: h.user_id,
            wallet: h.wallet.clone(),
            amount: format_units(h.amount),
            captured_amount: format_units(h.captured_amount),
            status: h.status.into(),
            reference: h.reference.clone(),
            expires_at: timestamp(h.expires_at),
            created_at: timestamp(h.created_at),
            finished_at: h.finished_at.map(timestamp),
        }
    }
}

crate::routes::shared::page_body!(HoldPage, Hold, HoldView);
