//! Money: exact decimals in the domain, integer minor units at scale 8 in
//! storage. Request amounts are parsed once, here, and trusted after.
//!
//! Rounding rule for derived values (margin, fees, P&L, commissions):
//! round half to even ("banker's rounding") to 8 decimals, once, in integer
//! minor units: see [`div_round`].

use std::fmt;

use rust_decimal::Decimal;

/// Decimal places kept everywhere.
pub const SCALE: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error(
        "must be a decimal string such as \"100.5\" (digits, an optional point and decimals; no sign, no exponent)"
    )]
    Format,
    #[error("at most 8 decimal places are allowed")]
    TooPrecise,
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must not exceed 92233720368.54775807")]
    TooLarge,
}

/// A strictly positive amount with at most 8 decimals that fits in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

impl Amount {
    /// Parses the API's plain decimal notation: `"100.5"`, `"0.00000001"`.
    pub fn parse(input: &str) -> Result<Self, MoneyError> {
        let (int_part, frac_part) = match input.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (input, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(int_part) || frac_part.is_some_and(|f| !digits(f)) {
            return Err(MoneyError::Format);
        }
        let frac = frac_part.unwrap_or("");
        if frac.len() > SCALE as usize {
            return Err(MoneyError::TooPrecise);
        }
        let int_part = int_part.trim_start_matches('0');
        // i64::MAX has 19 digits, 11 of them before the point at scale 8.
        if int_part.len() > 11 {
            return Err(MoneyError::TooLarge);
        }
        let mut units: i128 = 0;
        for b in int_part.bytes().chain(frac.bytes()) {
            units = units * 10 + i128::from(b - b'0');
        }
        for _ in frac.len()..SCALE as usize {
            units *= 10;
        }
        if units == 0 {
            return Err(MoneyError::NotPositive);
        }
        let units = i64::try_from(units).map_err(|_| MoneyError::TooLarge)?;
        Ok(Self(units))
    }

    pub fn from_units(units: i64) -> Result<Self, MoneyError> {
        if units <= 0 {
            return Err(MoneyError::NotPositive);
        }
        Ok(Self(units))
    }

    pub fn units(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_units(self.0))
    }
}

/// Exact conversion to minor units; refuses more than 8 decimals or overflow.
pub fn to_units(value: Decimal) -> Result<i64, MoneyError> {
    let normalized = value.normalize();
    if normalized.scale() > SCALE {
        return Err(MoneyError::TooPrecise);
    }
    let scaled = normalized
        .checked_mul(Decimal::from(100_000_000_i64))
        .ok_or(MoneyError::TooLarge)?;
    i64::try_from(scaled).map_err(|_| MoneyError::TooLarge)
}

pub fn from_units(units: i64) -> Decimal {
    Decimal::new(units, SCALE).normalize()
}

/// The API's rendering: plain notation, no trailing zeros, `"0"` for zero.
pub fn format_units(units: i64) -> String {
    from_units(units).to_string()
}

/// [`format_units`] for sums that may exceed an amount (up to 96 bits).
pub fn from_units_i128(units: i128) -> String {
    Decimal::try_from_i128_with_scale(units, SCALE)
        .map(|d| d.normalize().to_string())
        .unwrap_or_else(|_| "more than the largest amount".into())
}

/// Minor units in one whole unit (10^8).
pub const UNIT: i128 = 100_000_000;

/// `n / d` rounded half to even: the one rounding rule. Derived values are
/// computed exactly in `i128` minor units at a higher scale and rounded
/// once, here. `d` must be positive.
pub fn div_round(n: i128, d: i128) -> i128 {
    debug_assert!(d > 0);
    let (q, r) = (n.div_euclid(d), n.rem_euclid(d));
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal if q % 2 == 0 => q,
        std::cmp::Ordering::Equal => q + 1,
    }
}

/// A rate such as a fee or commission rate: `0..=1`, at most 8 decimals,
/// kept as minor units (0.001 = 100_000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(i64);

impl Rate {
    pub fn from_decimal(value: Decimal) -> Result<Self, MoneyError> {
        let units = to_units(value)?;
        if !(0..=100_000_000).contains(&units) {
            return Err(MoneyError::TooLarge);
        }
        Ok(Self(units))
    }

    pub fn units(self) -> i64 {
        self.0
    }

    /// `amount * rate`, rounded by the one rule. Cannot overflow: the
    /// result is at most `amount`.
    pub fn of(self, amount: i64) -> i64 {
        let v = div_round(i128::from(amount) * i128::from(self.0), UNIT);
        i64::try_from(v).unwrap_or(amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn parses_plain_decimals() {
        assert_eq!(Amount::parse("100.5").unwrap().units(), 10_050_000_000);
        assert_eq!(Amount::parse("0.00000001").unwrap().units(), 1);
        assert_eq!(Amount::parse("1").unwrap().units(), 100_000_000);
        assert_eq!(Amount::parse("007.10").unwrap().units(), 710_000_000);
        assert_eq!(
            Amount::parse("92233720368.54775807").unwrap().units(),
            i64::MAX
        );
    }

    #[test]
    fn refuses_what_the_contract_refuses() {
        for bad in [
            "", "-1", "+1", "1e5", "1E5", " 1", "1 ", "1.", ".5", "1,5", "0x10", "NaN", "1.2.3",
            "١",
        ] {
            assert_eq!(Amount::parse(bad), Err(MoneyError::Format), "{bad:?}");
        }
        assert_eq!(Amount::parse("0"), Err(MoneyError::NotPositive));
        assert_eq!(Amount::parse("0.00000000"), Err(MoneyError::NotPositive));
        assert_eq!(Amount::parse("0.000000001"), Err(MoneyError::TooPrecise));
        assert_eq!(Amount::parse("1.000000000"), Err(MoneyError::TooPrecise));
        assert_eq!(
            Amount::parse("92233720368.54775808"),
            Err(MoneyError::TooLarge)
        );
        assert_eq!(Amount::parse("100000000000"), Err(MoneyError::TooLarge));
        assert_eq!(Amount::parse(&"9".repeat(400)), Err(MoneyError::TooLarge));
    }

    #[test]
    fn formats_without_trailing_zeros() {
        assert_eq!(format_units(0), "0");
        assert_eq!(format_units(100_000_000), "1");
        assert_eq!(format_units(10_050_000_000), "100.5");
        assert_eq!(format_units(1), "0.00000001");
        assert_eq!(format_units(-250_000_000), "-2.5");
        assert_eq!(format_units(i64::MAX), "92233720368.54775807");
    }

    #[test]
    fn ten_times_a_tenth_is_exactly_one() {
        let tenth = Amount::parse("0.1").unwrap().units();
        let sum: i64 = (0..10).map(|_| tenth).sum();
        assert_eq!(format_units(sum), "1");
    }

    #[test]
    fn decimal_round_trip_is_exact_and_checked() {
        let d = Decimal::from_str("123.45678901").unwrap();
        assert_eq!(from_units(to_units(d).unwrap()), d);
        assert_eq!(
            to_units(Decimal::from_str("1.000000001").unwrap()),
            Err(MoneyError::TooPrecise)
        );
        assert_eq!(
            to_units(Decimal::from_str("1.100000000").unwrap()),
            Ok(110_000_000)
        );
        assert_eq!(to_units(Decimal::from(i64::MAX)), Err(MoneyError::TooLarge));
    }

    #[test]
    fn integer_division_rounds_half_to_even() {
        assert_eq!(div_round(5, 2), 2); // 2.5 -> 2
        assert_eq!(div_round(7, 2), 4); // 3.5 -> 4
        assert_eq!(div_round(11, 4), 3); // 2.75 -> 3
        assert_eq!(div_round(9, 4), 2); // 2.25 -> 2
        assert_eq!(div_round(-5, 2), -2); // -2.5 -> -2
        assert_eq!(div_round(-7, 2), -4); // -3.5 -> -4
        assert_eq!(div_round(-11, 4), -3); // -2.75 -> -3
        assert_eq!(div_round(-9, 4), -2); // -2.25 -> -2
        assert_eq!(div_round(12, 4), 3);
        assert_eq!(div_round(0, 7), 0);
    }

    #[test]
    fn rates_apply_with_the_same_rounding() {
        let r = |s: &str| Rate::from_decimal(Decimal::from_str(s).unwrap());
        let fifth = r("0.2").unwrap();
        assert_eq!(fifth.units(), 20_000_000);
        assert_eq!(fifth.of(1_000), 200);
        assert_eq!(fifth.of(3), 1); // 0.6 -> 1
        assert_eq!(r("0.5").unwrap().of(5), 2); // 2.5 -> 2
        assert_eq!(r("0.5").unwrap().of(7), 4); // 3.5 -> 4
        assert_eq!(r("1").unwrap().of(i64::MAX), i64::MAX);
        assert_eq!(r("0").unwrap().of(1_000), 0);
        assert!(r("1.5").is_err());
        assert!(r("0.000000001").is_err());
    }

    #[test]
    fn rounding_is_half_to_even() {
        // tenths of a minor unit: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -1.5 -> -2
        assert_eq!(div_round(5, 10), 0);
        assert_eq!(div_round(15, 10), 2);
        assert_eq!(div_round(25, 10), 2);
        assert_eq!(div_round(-15, 10), -2);
        assert_eq!(div_round(1_123_456_784, 10), 112_345_678);
        assert_eq!(div_round(1_123_456_786, 10), 112_345_679);
    }
}
