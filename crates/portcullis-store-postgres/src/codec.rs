//! Column encodings: timestamps as BIGINT unix seconds, structured values as JSON text, roles by
//! name, unsigned audit values as NUMERIC. Reading a value that does not decode is `Corrupt`.

use std::error::Error;

use bytes::{Buf, BufMut, BytesMut};
use portcullis_store::StoreResult;
use portcullis_types::admin::Role;
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};

use crate::error::corrupt;

/// A timestamp as whole seconds since the epoch (sub-second precision is dropped).
pub(crate) fn secs(at: OffsetDateTime) -> i64 {
    at.unix_timestamp()
}

pub(crate) fn from_secs(seconds: i64) -> StoreResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(seconds).map_err(corrupt)
}

pub(crate) fn from_opt_secs(seconds: Option<i64>) -> StoreResult<Option<OffsetDateTime>> {
    seconds.map(from_secs).transpose()
}

/// A list, limits or metadata value as JSON text.
pub(crate) fn to_json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(corrupt)
}

pub(crate) fn from_json<T: DeserializeOwned>(text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(corrupt)
}

pub(crate) fn role_from(name: &str) -> StoreResult<Role> {
    Role::parse(name).ok_or_else(|| corrupt(format!("unknown role {name:?}")))
}

/// Reads column `index` of `row`; a value of the wrong type or shape is `Corrupt`.
pub(crate) fn get<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> StoreResult<T> {
    row.try_get(index).map_err(corrupt)
}

/// A `u64` in a `NUMERIC(20,0)` column: every value fits exactly and sorts as a number (a
/// BIGINT would need a bit-cast, which breaks ordering above `i64::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Numeric(pub u64);

/// NUMERIC's binary form: digits in base 10 000, most significant first.
const NBASE: u64 = 10_000;
const SIGN_POSITIVE: u16 = 0x0000;

impl ToSql for Numeric {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        // Least significant first while splitting.
        let mut digits = Vec::with_capacity(5);
        let mut rest = self.0;
        while rest > 0 {
            digits.push((rest % NBASE) as i16);
            rest /= NBASE;
        }
        let weight = digits.len().saturating_sub(1) as i16;
        // Trailing zero digits are implied by the weight.
        let first_nonzero = digits.iter().position(|digit| *digit != 0).unwrap_or(digits.len());
        let significant = &digits[first_nonzero..];
        out.put_i16(significant.len() as i16);
        out.put_i16(weight);
        out.put_u16(SIGN_POSITIVE);
        out.put_u16(0); // display scale
        for digit in significant.iter().rev() {
            out.put_i16(*digit);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        is_numeric(ty)
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, mut raw: &'a [u8]) -> Result<Numeric, Box<dyn Error + Sync + Send>> {
        if raw.len() < 8 {
            return Err("numeric value too short".into());
        }
        let count = raw.get_i16();
        let weight = raw.get_i16();
        let sign = raw.get_u16();
        let _scale = raw.get_u16();
        let count = usize::try_from(count).map_err(|_| "negative numeric digit count")?;
        if raw.len() != count * 2 {
            return Err("numeric digit count does not match its length".into());
        }
        if count == 0 {
            // Zero (positive or not); NaN and infinities carry their sign flag with no digits.
            return if sign == SIGN_POSITIVE || sign == 0x4000 {
                Ok(Numeric(0))
            } else {
                Err("numeric is not a number".into())
            };
        }
        if sign != SIGN_POSITIVE {
            return Err("negative or special numeric where a u64 belongs".into());
        }
        let mut value: u128 = 0;
        let mut exponent = i32::from(weight);
        for _ in 0..count {
            let digit = raw.get_i16();
            if !(0..10_000).contains(&digit) {
                return Err("numeric digit out of range".into());
            }
            if exponent >= 0 {
                value = value * u128::from(NBASE) + digit.unsigned_abs() as u128;
                if value > u128::from(u64::MAX) {
                    return Err("numeric above u64::MAX".into());
                }
            } else if digit != 0 {
                return Err("numeric with a fraction where a u64 belongs".into());
            }
            exponent -= 1;
        }
        // Trailing zero digits are implied: scale up to the units digit.
        while exponent >= 0 {
            value *= u128::from(NBASE);
            if value > u128::from(u64::MAX) {
                return Err("numeric above u64::MAX".into());
            }
            exponent -= 1;
        }
        Ok(Numeric(u64::try_from(value).map_err(|_| "numeric above u64::MAX")?))
    }

    fn accepts(ty: &Type) -> bool {
        is_numeric(ty)
    }
}

fn is_numeric(ty: &Type) -> bool {
    *ty == Type::NUMERIC || matches!(ty.kind(), Kind::Domain(base) if *base == Type::NUMERIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(value: u64) -> u64 {
        let mut bytes = BytesMut::new();
        Numeric(value).to_sql(&Type::NUMERIC, &mut bytes).unwrap();
        Numeric::from_sql(&Type::NUMERIC, &bytes).unwrap().0
    }

    #[test]
    fn every_u64_round_trips() {
        for value in [0, 1, 9_999, 10_000, 10_001, 100_000_000, 123_400_000_000, i64::MAX as u64, i64::MAX as u64 + 1] {
            assert_eq!(round_trip(value), value);
        }
        assert_eq!(round_trip(u64::MAX), u64::MAX);
    }

    #[test]
    fn encodes_like_postgres() {
        // 1 0000 0000: one digit of weight 2, trailing zero digits implied.
        let mut bytes = BytesMut::new();
        Numeric(100_000_000).to_sql(&Type::NUMERIC, &mut bytes).unwrap();
        assert_eq!(&bytes[..], [0, 1, 0, 2, 0, 0, 0, 0, 0, 1]);
        let mut zero = BytesMut::new();
        Numeric(0).to_sql(&Type::NUMERIC, &mut zero).unwrap();
        assert_eq!(&zero[..], [0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn refuses_what_is_not_a_u64() {
        let decode = |bytes: &[u8]| Numeric::from_sql(&Type::NUMERIC, bytes);
        // -1
        assert!(decode(&[0, 1, 0, 0, 0x40, 0, 0, 0, 0, 1]).is_err());
        // 0.5 (one digit, weight -1)
        assert!(decode(&[0, 1, 0xFF, 0xFF, 0, 0, 0, 1, 0x13, 0x88]).is_err());
        // 1e20 (weight 5)
        assert!(decode(&[0, 1, 0, 5, 0, 0, 0, 0, 0, 1]).is_err());
        // NaN
        assert!(decode(&[0, 0, 0, 0, 0xC0, 0, 0, 0]).is_err());
        assert!(decode(&[0, 1]).is_err());
        // 1.0000 with scale 4 is still one.
        assert_eq!(decode(&[0, 1, 0, 0, 0, 0, 0, 4, 0, 1]).unwrap(), Numeric(1));
    }
}
