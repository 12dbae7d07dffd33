//! Bodies of the Referrals routes.

use domain::money::format_units;
use poem_openapi::Object;

#[derive(Object, Debug, Clone)]
pub struct ReferralLevel {
    /// 1 = direct referees, 2 = their referees, …
    pub level: i32,
    pub referees: i64,
    pub commission_paid: String,
    pub commission_pending: String,
}

#[derive(Object, Debug, Clone)]
pub struct ReferralStats {
    pub referral_code: String,
    /// Direct referees (level 1).
    pub referees: i64,
    pub by_level: Vec<ReferralLevel>,
    /// Signup bonuses this user earned as a referrer.
    pub signup_bonus_paid: String,
    /// Commissions credited to the live wallet.
    pub commission_paid: String,
    /// Commissions accrued and not yet settled.
    pub commission_pending: String,
}

impl From<&domain::trading::referrals::ReferralStats> for ReferralStats {
    fn from(s: &domain::trading::referrals::ReferralStats) -> Self {
        Self {
            referral_code: s.referral_code.clone(),
            referees: s.referees,
            by_level: s
                .by_level
                .iter()
                .map(|l| ReferralLevel {
                    level: l.level,
                    referees: l.referees,
                    commission_paid: format_units(l.commission_paid),
                    commission_pending: format_units(l.commission_pending),
                })
                .collect(),
            signup_bonus_paid: format_units(s.signup_bonus_paid),
            commission_paid: format_units(s.commission_paid),
            commission_pending: format_units(s.commission_pending),
        }
    }
}

#[derive(Object, Debug, Clone)]
pub struct Settlement {
    /// Commissions credited by this call.
    pub settled: u64,
    /// Their total.
    pub amount: String,
}

impl From<&domain::trading::referrals::Settlement> for Settlement {
    fn from(s: &domain::trading::referrals::Settlement) -> Self {
        Self {
            settled: s.settled,
            amount: format_units(s.amount),
        }
    }
}
