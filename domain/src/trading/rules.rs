//! The trading rules: symbols, sides, and the arithmetic of margin, fees and
//! profit and loss. Pure functions, unit-tested here; `orders` applies them
//! under the wallet lock.
//!
//! Arithmetic is exact: quantities and prices are minor units (scale 8), so a
//! notional value `quantity * price` is an `i128` at scale 16. Each derived
//! amount is rounded once, half to even, to 8 decimals (`money::div_round`):
//! - margin = quantity × price / leverage
//! - fee    = quantity × price × fee_rate
//! - P&L    = (close − open) × quantity for a buy, (open − close) × quantity for a sell
//!
//! An order whose notional value is below the configured minimum, or whose
//! margin or fee rounds to zero, is refused: it would hold no margin or pay no
//! fee, so it could only win.

use crate::error::{DomainError, DomainResult};
use rust_decimal::Decimal;

use crate::money::{Amount, Rate, SCALE, UNIT, div_round, format_units};

/// A price-feed symbol: 2 to 20 capital letters or digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Symbol(String);

impl Symbol {
    pub fn parse(input: &str) -> DomainResult<Self> {
        let ok = (2..=20).contains(&input.len())
            && input
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !ok {
            return Err(DomainError::invalid(
                "symbol",
                "must be 2 to 20 capital letters or digits (^[A-Z0-9]{2,20}$)",
            ));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buy => "buy",
            Self::Sell => "sell",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "buy" => Some(Self::Buy),
            "sell" => Some(Self::Sell),
            _ => None,
        }
    }
}

/// Trading settings, from the configuration.
#[derive(Debug, Clone)]
pub struct TradingRules {
    pub fee_rate: Rate,
    pub max_leverage: u32,
    /// 0: no cooldown.
    pub cooldown_ms: u64,
    /// Smallest notional value (`quantity * price`) of an order, minor units.
    pub min_notional: i64,
}

impl TradingRules {
    /// A leverage these rules allow: 1 to `max_leverage`.
    pub fn leverage(&self, value: u32) -> DomainResult<Leverage> {
        if value == 0 || value > self.max_leverage {
            return Err(DomainError::invalid(
                "leverage",
                format!("must be within 1..={}", self.max_leverage),
            ));
        }
        Ok(Leverage(value))
    }
}

/// A leverage checked against the trading rules (see
/// [`TradingRules::leverage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leverage(u32);

impl Leverage {
    pub fn get(self) -> u32 {
        self.0
    }
}

/// `quantity * price`, exact, at scale 16.
fn notional(quantity: i64, price: i64) -> i128 {
    i128::from(quantity) * i128::from(price)
}

/// What opening an order takes from the wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenCost {
    /// Held as margin (balance unchanged).
    pub margin: i64,
    /// Charged to balance.
    pub fee: i64,
}

impl OpenCost {
    /// Free margin needed: the margin plus the fee.
    pub fn required(self) -> i128 {
        i128::from(self.margin) + i128::from(self.fee)
    }
}

/// The fee on `quantity` at `price`; `None` when it exceeds every balance.
pub fn fee(quantity: i64, price: i64, rate: Rate) -> Option<i64> {
    let scaled = notional(quantity, price).checked_mul(i128::from(rate.units()))?;
    i64::try_from(div_round(scaled, UNIT * UNIT)).ok()
}

/// Margin and open fee. `None` when either exceeds the largest balance (so
/// no wallet can afford the order).
pub fn open_cost(quantity: Amount, price: i64, leverage: u32, rate: Rate) -> Option<OpenCost> {
    let quantity = quantity.units();
    let margin = div_round(
        notional(quantity, price),
        UNIT * i128::from(leverage.max(1)),
    );
    Some(OpenCost {
        margin: i64::try_from(margin).ok()?,
        fee: fee(quantity, price, rate)?,
    })
}

/// Refuses an order too small to carry a cost: its notional value must reach
/// the minimum, its margin must not round to zero, nor its fee unless the fee
/// rate itself is zero. `cost: None` (too large to afford) passes: it is
/// refused by [`check_affordable`].
pub fn check_notional(
    quantity: Amount,
    price: i64,
    cost: Option<OpenCost>,
    rules: &TradingRules,
) -> DomainResult<()> {
    let value = notional(quantity.units(), price);
    let below_minimum = value < i128::from(rules.min_notional) * UNIT;
    let rounds_to_zero =
        cost.is_some_and(|c| c.margin == 0 || (c.fee == 0 && rules.fee_rate.units() > 0));
    if below_minimum || rounds_to_zero {
        // exact, at scale 16: a value that rounds to 0 at scale 8 is not shown as 0
        let shown = Decimal::try_from_i128_with_scale(value, 2 * SCALE)
            .map_or_else(|_| value.to_string(), |d| d.normalize().to_string());
        return Err(DomainError::NotionalTooSmall {
            notional: shown,
            minimum: format_units(rules.min_notional),
        });
    }
    Ok(())
}

/// Refuses an order whose margin plus fee exceeds the wallet's free margin,
/// `balance - margin`, where `margin` is everything the balance already
/// backs (open orders' margin and held funds).
pub fn check_affordable(
    balance: i64,
    margin: i64,
    cost: Option<OpenCost>,
) -> DomainResult<OpenCost> {
    let free = i128::from(balance) - i128::from(margin);
    match cost {
        Some(cost) if cost.required() <= free => Ok(cost),
        Some(cost) => Err(DomainError::InsufficientMargin {
            available: format_units(balance - margin),
            required: crate::money::from_units_i128(cost.required()),
        }),
        None => Err(DomainError::InsufficientMargin {
            available: format_units(balance - margin),
            required: "more than the largest balance".into(),
        }),
    }
}

/// Realised P&L of closing `quantity` opened at `open` at `close`; `None`
/// when it does not fit in an amount.
pub fn pnl(side: Side, quantity: i64, open: i64, close: i64) -> Option<i64> {
    let move_ = match side {
        Side::Buy => i128::from(close) - i128::from(open),
        Side::Sell => i128::from(open) - i128::from(close),
    };
    i64::try_from(div_round(move_ * i128::from(quantity), UNIT)).ok()
}

/// How closing an order changes its wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseEffect {
    /// The order's margin, released.
    pub margin_release: i64,
    pub pnl: i64,
    pub fee: i64,
    /// The part of loss plus fee the free balance could not cover: credited
    /// so that the balance never goes below what still backs other orders.
    pub written_off: i64,
}

impl CloseEffect {
    /// The net change of the balance.
    pub fn balance_delta(&self) -> i64 {
        self.written_off + self.pnl - self.fee
    }
}

/// The wallet holds `balance` and `margin` (this order's `order_margin`
/// included; the caller adds held funds, which are protected the same way).
/// After the release, the free balance absorbs `pnl - fee`; what it cannot
/// absorb is written off. Margin that other open orders hold is never
/// touched, so `balance >= margin` keeps holding.
pub fn close_effect(
    balance: i64,
    margin: i64,
    order_margin: i64,
    pnl: i64,
    fee: i64,
) -> CloseEffect {
    let free_after_release = i128::from(balance) - (i128::from(margin) - i128::from(order_margin));
    let after = free_after_release + i128::from(pnl) - i128::from(fee);
    let written_off = if after < 0 {
        i64::try_from(-after).unwrap_or(i64::MAX)
    } else {
        0
    };
    CloseEffect {
        margin_release: order_margin,
        pnl,
        fee,
        written_off,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    use rust_decimal::Decimal;

    fn amount(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    fn units(s: &str) -> i64 {
        amount(s).units()
    }

    fn rate(s: &str) -> Rate {
        Rate::from_decimal(Decimal::from_str(s).unwrap()).unwrap()
    }

    #[test]
    fn symbols_follow_the_pattern() {
        assert!(Symbol::parse("BTCUSD").is_ok());
        assert!(Symbol::parse("X1").is_ok());
        assert!(Symbol::parse(&"A".repeat(20)).is_ok());
        for bad in ["", "B", "btcusd", "BTC-USD", "BTC USD", &"A".repeat(21)] {
            assert!(Symbol::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn margin_is_notional_over_leverage_and_fee_is_notional_times_rate() {
        // 2 units at 50000, leverage 10, fee 0.1 %: notional 100000.
        let cost = open_cost(amount("2"), units("50000"), 10, rate("0.001")).unwrap();
        assert_eq!(cost.margin, units("10000"));
        assert_eq!(cost.fee, units("100"));
        assert_eq!(cost.required(), i128::from(units("10100")));
    }

    #[test]
    fn leverage_one_and_the_maximum() {
        let one = open_cost(amount("3"), units("7"), 1, rate("0.001")).unwrap();
        assert_eq!(one.margin, units("21"));
        let max = open_cost(amount("3"), units("7"), 100, rate("0.001")).unwrap();
        assert_eq!(max.margin, units("0.21"));
        assert_eq!(max.fee, one.fee); // the fee does not depend on leverage
        let rules = TradingRules {
            fee_rate: rate("0.001"),
            max_leverage: 100,
            cooldown_ms: 0,
            min_notional: 0,
        };
        assert!(rules.leverage(1).is_ok());
        assert!(rules.leverage(100).is_ok());
        assert!(rules.leverage(0).is_err());
        assert!(rules.leverage(101).is_err());
    }

    #[test]
    fn derived_amounts_round_half_to_even_once() {
        // notional 0.00000001 * 0.5 = 0.000000005 -> margin at leverage 1 rounds to 0 (even)
        let c = open_cost(amount("0.00000001"), units("0.5"), 1, rate("0.001")).unwrap();
        assert_eq!(c.margin, 0);
        // notional 0.000000015 -> 0.00000002 (half to even, up)
        let c = open_cost(amount("0.00000001"), units("1.5"), 1, rate("0.001")).unwrap();
        assert_eq!(c.margin, 2);
        // notional 1 / leverage 3 = 0.333333333… -> 0.33333333
        let c = open_cost(amount("1"), units("1"), 3, rate("0.001")).unwrap();
        assert_eq!(c.margin, 33_333_333);
        // fee of 0.00000001 notional at 0.1 % rounds to 0
        assert_eq!(fee(units("0.00000001"), units("1"), rate("0.001")), Some(0));
        // a fee that is exactly half a minor unit: 0.000005 * 0.001 = 0.000000005 -> 0
        assert_eq!(fee(units("0.000005"), units("1"), rate("0.001")), Some(0));
        assert_eq!(fee(units("0.000015"), units("1"), rate("0.001")), Some(2));
    }

    #[test]
    fn huge_orders_are_refused_not_wrapped() {
        let max = Amount::from_units(i64::MAX).unwrap();
        assert_eq!(open_cost(max, i64::MAX, 1, rate("0.001")), None);
        assert!(matches!(
            check_affordable(units("100"), 0, None),
            Err(DomainError::InsufficientMargin { .. })
        ));
    }

    fn rules(fee_rate: &str, min_notional: &str) -> TradingRules {
        TradingRules {
            fee_rate: rate(fee_rate),
            max_leverage: 100,
            cooldown_ms: 0,
            min_notional: crate::money::to_units(Decimal::from_str(min_notional).unwrap()).unwrap(),
        }
    }

    /// `check_notional` for `quantity` at `price` and `leverage`.
    fn notional_check(
        rules: &TradingRules,
        quantity: &str,
        price: &str,
        leverage: u32,
    ) -> DomainResult<()> {
        let (quantity, price) = (amount(quantity), units(price));
        let cost = open_cost(quantity, price, leverage, rules.fee_rate);
        check_notional(quantity, price, cost, rules)
    }

    #[test]
    fn orders_below_the_minimum_notional_are_refused_naming_it() {
        let r = rules("0.001", "1");
        // 0.1 at 10 is exactly the minimum
        assert!(notional_check(&r, "0.1", "10", 100).is_ok());
        match notional_check(&r, "0.09999999", "10", 1) {
            Err(DomainError::NotionalTooSmall { notional, minimum }) => {
                assert_eq!((notional.as_str(), minimum.as_str()), ("0.9999999", "1"));
            }
            other => panic!("expected notional_too_small, got {other:?}"),
        }
        // the value is shown exactly, even where 8 decimals would show 0
        match notional_check(&r, "0.00000001", "0.1", 100) {
            Err(DomainError::NotionalTooSmall { notional, .. }) => {
                assert_eq!(notional, "0.000000001");
            }
            other => panic!("expected notional_too_small, got {other:?}"),
        }
    }

    #[test]
    fn orders_whose_margin_or_fee_rounds_to_zero_are_refused_without_a_minimum() {
        let r = rules("0.001", "0");
        // 0.00000001 at 1, leverage 100: margin and fee both round to 0, it
        // would open for free
        let cost = open_cost(amount("0.00000001"), units("1"), 100, r.fee_rate).unwrap();
        assert_eq!((cost.margin, cost.fee), (0, 0));
        assert!(matches!(
            notional_check(&r, "0.00000001", "1", 100),
            Err(DomainError::NotionalTooSmall { .. })
        ));
        // margin 0.00000005, fee 0.000000005 -> 0: still refused
        assert!(matches!(
            notional_check(&r, "0.000005", "1", 100),
            Err(DomainError::NotionalTooSmall { .. })
        ));
        // fee 0.00000002, margin 0.00000015: accepted
        assert!(notional_check(&r, "0.000015", "1", 100).is_ok());
        // with a zero fee rate a zero fee is the rule, not a rounding loss
        let free = rules("0", "0");
        assert!(notional_check(&free, "0.000015", "1", 100).is_ok());
        assert!(notional_check(&free, "0.00000001", "1", 100).is_err());
        // too large to compute is left to the affordability check
        let max = Amount::from_units(i64::MAX).unwrap();
        assert!(check_notional(max, i64::MAX, None, &r).is_ok());
    }

    #[test]
    fn free_margin_must_cover_margin_plus_fee() {
        let cost = open_cost(amount("1"), units("100"), 10, rate("0.01")).unwrap();
        // margin 10 + fee 1 = 11
        assert!(check_affordable(units("11"), 0, Some(cost)).is_ok());
        assert!(check_affordable(units("20"), units("9"), Some(cost)).is_ok());
        match check_affordable(units("20"), units("9.00000001"), Some(cost)) {
            Err(DomainError::InsufficientMargin {
                available,
                required,
            }) => {
                assert_eq!(available, "10.99999999");
                assert_eq!(required, "11");
            }
            other => panic!("expected insufficient margin, got {other:?}"),
        }
    }

    #[test]
    fn pnl_of_buys_and_sells() {
        let q = units("2");
        assert_eq!(
            pnl(Side::Buy, q, units("100"), units("110")),
            Some(units("20"))
        );
        assert_eq!(
            pnl(Side::Buy, q, units("100"), units("90")),
            Some(-units("20"))
        );
        assert_eq!(
            pnl(Side::Sell, q, units("100"), units("90")),
            Some(units("20"))
        );
        assert_eq!(
            pnl(Side::Sell, q, units("100"), units("110")),
            Some(-units("20"))
        );
        assert_eq!(pnl(Side::Sell, q, units("100"), units("100")), Some(0));
        // 0.00000003 * 0.5 = 0.000000015 -> 0.00000002; the loss rounds the same way
        let q = units("0.00000003");
        assert_eq!(pnl(Side::Buy, q, units("1"), units("1.5")), Some(2));
        assert_eq!(pnl(Side::Sell, q, units("1"), units("1.5")), Some(-2));
    }

    #[test]
    fn a_covered_close_writes_nothing_off() {
        // balance 1000, this order holds 100 of margin, loses 50, fee 1
        let e = close_effect(
            units("1000"),
            units("100"),
            units("100"),
            -units("50"),
            units("1"),
        );
        assert_eq!(e.written_off, 0);
        assert_eq!(e.margin_release, units("100"));
        assert_eq!(e.balance_delta(), -units("51"));
        // a profit is added in full, the fee charged
        let e = close_effect(
            units("1000"),
            units("100"),
            units("100"),
            units("70"),
            units("1"),
        );
        assert_eq!((e.written_off, e.balance_delta()), (0, units("69")));
    }

    #[test]
    fn a_loss_larger_than_the_balance_is_written_off_down_to_zero() {
        // balance 100 (all of it margin of this order), loss 250, fee 1
        let e = close_effect(
            units("100"),
            units("100"),
            units("100"),
            -units("250"),
            units("1"),
        );
        assert_eq!(e.written_off, units("151"));
        assert_eq!(units("100") + e.balance_delta(), 0);
    }

    #[test]
    fn margin_of_other_orders_is_not_consumed_by_a_loss() {
        // balance 300; margin 200 = 100 (this order) + 100 (another order)
        let e = close_effect(units("300"), units("200"), units("100"), -units("500"), 0);
        // free after release is 200; 300 of the loss is written off
        assert_eq!(e.written_off, units("300"));
        let balance_after = units("300") + e.balance_delta();
        let margin_after = units("200") - e.margin_release;
        assert_eq!((balance_after, margin_after), (units("100"), units("100")));
    }

    #[test]
    fn sides_parse_strictly() {
        assert_eq!(Side::parse("buy"), Some(Side::Buy));
        assert_eq!(Side::parse("sell"), Some(Side::Sell));
        assert_eq!(Side::parse("BUY"), None);
    }
}
