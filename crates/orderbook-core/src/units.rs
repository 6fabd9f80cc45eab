//! Exact conversion between `Decimal` values and integer multiples of a unit
//! (ticks for prices, lots for quantities).

use rust_decimal::Decimal;

/// The largest number of ticks or lots a single price or quantity may have.
/// Keeps every sum of two values inside `u64` and level totals far from `u128::MAX`.
pub(crate) const MAX_UNITS: u64 = i64::MAX as u64;

/// 10^0 ..= 10^28 (Decimal's maximum scale is 28).
const POW10: [u128; 29] = {
    let mut table = [1u128; 29];
    let mut i = 1;
    while i < 29 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// Why a value could not be converted into units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnitError {
    /// Zero or negative.
    NotPositive,
    /// Not an exact multiple of the unit.
    OffGrid,
    /// More than [`MAX_UNITS`] units.
    TooLarge,
}

/// A positive unit size, normalized (no trailing zeros), kept as mantissa and scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unit {
    mantissa: u128,
    scale: u32,
}

impl Unit {
    /// The unit for a positive decimal size, or `None` if it is not positive.
    pub(crate) fn new(size: Decimal) -> Option<Unit> {
        if size.is_sign_negative() || size.is_zero() {
            return None;
        }
        let n = size.normalize();
        let mantissa = u128::try_from(n.mantissa()).ok()?;
        Some(Unit {
            mantissa,
            scale: n.scale(),
        })
    }

    /// The unit as written in the digest: mantissa and scale.
    pub(crate) fn parts(self) -> (u128, u32) {
        (self.mantissa, self.scale)
    }

    /// `value / unit` if it is a positive whole number no larger than [`MAX_UNITS`].
    #[inline(always)]
    pub(crate) fn to_units(self, value: Decimal) -> Result<u64, UnitError> {
        // Fastest path: a positive value of the unit's scale with a 64-bit
        // mantissa (read straight from the decimal's 16 bytes).
        let raw = value.serialize();
        let flags = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let lo = u64::from_le_bytes([
            raw[4], raw[5], raw[6], raw[7], raw[8], raw[9], raw[10], raw[11],
        ]);
        let hi = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
        if flags >> 31 == 0
            && hi == 0
            && lo != 0
            && (flags >> 16) & 0xff == self.scale
            && self.mantissa == 1
        {
            return if lo <= MAX_UNITS {
                Ok(lo)
            } else {
                Err(UnitError::TooLarge)
            };
        }
        self.to_units_general(value)
    }

    /// [`Unit::to_units`] for every other case.
    #[inline(never)]
    fn to_units_general(self, value: Decimal) -> Result<u64, UnitError> {
        if value.is_sign_negative() || value.is_zero() {
            return Err(UnitError::NotPositive);
        }
        // Positive, so the mantissa is positive and fits in 96 bits.
        let m = value.mantissa().unsigned_abs();
        let s = value.scale();
        let units = match self.fast_units(m, s) {
            Some(units) => units?,
            None => self.slow_units(m, s)?,
        };
        match u64::try_from(units) {
            Ok(u) if u <= MAX_UNITS => Ok(u),
            _ => Err(UnitError::TooLarge),
        }
    }

    /// The common case in 64-bit arithmetic (a unit of the form 10^-k needs no
    /// division at all when the value has the unit's scale). `None` when the
    /// numbers do not fit; then [`Unit::slow_units`] decides.
    #[inline]
    fn fast_units(self, m: u128, s: u32) -> Option<Result<u128, UnitError>> {
        let m = u64::try_from(m).ok()?;
        let unit = u64::try_from(self.mantissa).ok()?;
        if s <= self.scale {
            let num = m.checked_mul(u64::try_from(POW10[(self.scale - s) as usize]).ok()?)?;
            if unit == 1 {
                return Some(Ok(u128::from(num)));
            }
            Some(if num % unit == 0 {
                Ok(u128::from(num / unit))
            } else {
                Err(UnitError::OffGrid)
            })
        } else {
            let den = unit.checked_mul(u64::try_from(POW10[(s - self.scale) as usize]).ok()?)?;
            Some(if m % den == 0 {
                Ok(u128::from(m / den))
            } else {
                Err(UnitError::OffGrid)
            })
        }
    }

    /// The general case in 128-bit arithmetic.
    fn slow_units(self, m: u128, s: u32) -> Result<u128, UnitError> {
        if s <= self.scale {
            // value / unit = m * 10^(unit_scale - s) / unit_mantissa
            let num = m
                .checked_mul(POW10[(self.scale - s) as usize])
                .ok_or(UnitError::TooLarge)?;
            if !num.is_multiple_of(self.mantissa) {
                return Err(UnitError::OffGrid);
            }
            Ok(num / self.mantissa)
        } else {
            // value / unit = m / (unit_mantissa * 10^(s - unit_scale)); an
            // overflowing denominator is larger than any mantissa, so off grid.
            let den = self
                .mantissa
                .checked_mul(POW10[(s - self.scale) as usize])
                .ok_or(UnitError::OffGrid)?;
            if !m.is_multiple_of(den) {
                return Err(UnitError::OffGrid);
            }
            Ok(m / den)
        }
    }

    /// `units * unit` as a decimal; saturates at `Decimal::MAX` (only reachable
    /// for aggregated depth of absurd sizes).
    #[inline]
    pub(crate) fn to_decimal(self, units: u128) -> Decimal {
        match units.checked_mul(self.mantissa) {
            // Fits Decimal's 96-bit mantissa; the scale is at most 28 by construction.
            Some(v) if v >> 96 == 0 => Decimal::from_parts(
                v as u32,
                (v >> 32) as u32,
                (v >> 64) as u32,
                false,
                self.scale,
            ),
            _ => Decimal::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test decimal")
    }

    #[test]
    fn conversions_are_exact() {
        let tick = Unit::new(d("0.01")).expect("unit");
        let cases = [
            ("100.25", Ok(10025)),
            ("100.250", Ok(10025)),
            ("100", Ok(10000)),
            ("0.01", Ok(1)),
            ("0.001", Err(UnitError::OffGrid)),
            ("100.255", Err(UnitError::OffGrid)),
            ("0", Err(UnitError::NotPositive)),
            ("-1", Err(UnitError::NotPositive)),
            ("79228162514264337593543950335", Err(UnitError::TooLarge)),
            ("0.0000000000000000000000000001", Err(UnitError::OffGrid)),
        ];
        for (value, expected) in cases {
            assert_eq!(tick.to_units(d(value)), expected, "{value}");
        }
        let odd = Unit::new(d("0.25")).expect("unit");
        assert_eq!(odd.to_units(d("1.5")), Ok(6));
        assert_eq!(odd.to_units(d("1.6")), Err(UnitError::OffGrid));
        assert_eq!(odd.to_decimal(6), d("1.5"));
        let big = Unit::new(d("50")).expect("unit");
        assert_eq!(big.to_units(d("150")), Ok(3));
        assert_eq!(big.to_units(d("160")), Err(UnitError::OffGrid));
        assert_eq!(big.to_decimal(3), d("150"));
        assert_eq!(big.to_decimal(u128::MAX), Decimal::MAX);
        assert_eq!(tick.to_decimal(0), d("0"));
        assert!(Unit::new(d("0")).is_none());
        assert!(Unit::new(d("-0.1")).is_none());
    }
}
