//! The audit record's field table: the machinery behind [`crate::AuditRecord::FIELDS`].
//!
//! The record is declared once, through the `audit_record!` macro, as a list of fields in
//! canonical order. From that one list come the struct itself, [`crate::AuditRecord::FIELDS`] (name and column class
//! of each field), [`crate::AuditRecord::values`] (each field as a [`Value`]) and
//! [`crate::AuditRecord::read`] (a record from a stored row). The canonical encoding the chain
//! hashes, both stores' column lists and placeholders, the CSV export and the admin view all walk
//! these, so a field added to the list reaches every one of them; what must still be written by
//! hand (a migration's column, the admin view's field) is checked against the list by a test.

use time::OffsetDateTime;

use crate::record::{AuditDecision, AuditKind, PrincipalKind};

/// The class of column a field is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// An unsigned 64-bit count or sequence number: every `u64` must read back exactly.
    Count,
    /// An HTTP status code.
    Status,
    /// A time, as Unix milliseconds.
    Millis,
    Text,
    Flag,
}

/// One entry of the field table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub column: Column,
    /// Whether the field may be absent (`NULL`).
    pub nullable: bool,
}

/// One field's value, as every encoding of a record sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Count(Option<u64>),
    Status(u16),
    /// Unix milliseconds (rounded down).
    Millis(i64),
    Text(Option<&'a str>),
    Flag(bool),
}

impl Value<'_> {
    /// Whether the field is absent (`None`, stored as `NULL`).
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Count(None) | Value::Text(None))
    }
}

/// A stored row, read column by column in the order of the field table; each backend implements
/// it over its own row type.
pub trait ReadColumns {
    type Error;
    fn count(&mut self, index: usize) -> Result<Option<u64>, Self::Error>;
    /// Wider than a status, so that an out-of-range stored value is reported, not wrapped.
    fn status(&mut self, index: usize) -> Result<i64, Self::Error>;
    fn millis(&mut self, index: usize) -> Result<i64, Self::Error>;
    fn text(&mut self, index: usize) -> Result<Option<String>, Self::Error>;
    fn flag(&mut self, index: usize) -> Result<bool, Self::Error>;
    /// A stored value no record can hold (`NULL` in a required column, an unknown kind name).
    fn invalid(&self, index: usize, why: String) -> Self::Error;
}

/// A type a record field may have: how it is stored, shown and read back.
pub trait FieldType: Sized {
    const COLUMN: Column;
    const NULLABLE: bool = false;
    fn value(&self) -> Value<'_>;
    fn read<R: ReadColumns>(row: &mut R, index: usize) -> Result<Self, R::Error>;
}

fn required<T, R: ReadColumns>(row: &R, index: usize, value: Option<T>) -> Result<T, R::Error> {
    value.ok_or_else(|| row.invalid(index, "NULL in a required column".into()))
}

impl FieldType for u64 {
    const COLUMN: Column = Column::Count;
    fn value(&self) -> Value<'_> {
        Value::Count(Some(*self))
    }
    fn read<R: ReadColumns>(row: &mut R, index: usize) -> Result<Self, R::Error> {
        let value = row.count(index)?;
        required(row, index, value)
    }
}

impl FieldType for Option<u64> {
    const COLUMN: Column = Column::Count;
    const NULLABLE: bool = true;
    fn value(&self) -> Value<'_> {
        Value::Count(*self)
    }
    fn read<R: ReadColumns>(row: &mut R, index: usize) -> Result<Self, R::Error> {
        row.count(index)
    }
}

impl FieldType for u16 {
    const COLUMN: Column = Column::Status;
    fn value(&self) -> Value<'_> {
        Value::Status(*self)
    }
    fn read<R: ReadColumns>(row: &mut R, index: usize) -> Result<Self, R::Error> {
        let status = row.status(index)?;
        u16::try_from(status).map_err(|_| row.invalid(index, format!("status {status} out of range")))
    }
}

impl FieldType for OffsetDateTime {
    const COLUMN: Column = Column::Millis;
    fn value(&self) -> Value<'_> {
        Value::Millis(unix_millis(*self))
    }
    fn read<R: ReadColumns>(row: &mut R, index: usize) -> Result<Self, R::Error> {
        let millis = row.millis(index)?;
        from_unix_millis(millis).ok_or_else(|| row.invalid(index, format!("time {millis} ms out of range")))
    }
}

impl FieldType for String {
    const COLUMN: Column = Column::Text;
    fn value(&self) -> Value<'_> {
        Value::Text(Some(self))
    }
    fn read<R: ReadColumns>(row: &mut R, index: usize) -> Result<Self, R::Error> {
        let text = row.text(index)?;
        required(row, index, text)
    }
}

impl FieldType for Option<String> {
    const COLUMN: Column = Column::Text;
    const NULLABLE: bool = true;
    fn value(&self) -> Value<'_> {
        Value::Text(self.as_deref())
    }
    fn read<R: ReadColumns>(row: &mut R, index: usize) -> Result<Self, R::Error> {
        row.text(index)
    }
}

impl FieldType for bool {
    const COLUMN: Column = Column::Flag;
    fn value(&self) -> Value<'_> {
        Value::Flag(*self)
    }
    fn read<R: ReadColumns>(row: &mut R, index: usize) -> Result<Self, R::Error> {
        row.flag(index)
    }
}

/// Kinds and decisions are stored, hashed and shown by name.
macro_rules! named_field {
    ($type:ty) => {
        impl FieldType for $type {
            const COLUMN: Column = Column::Text;
            fn value(&self) -> Value<'_> {
                Value::Text(Some(self.name()))
            }
            fn read<R: ReadColumns>(row: &mut R, index: usize) -> Result<Self, R::Error> {
                let name = String::read(row, index)?;
                <$type>::from_name(&name).ok_or_else(|| row.invalid(index, format!("unknown value {name:?}")))
            }
        }
    };
}
named_field!(AuditKind);
named_field!(AuditDecision);

impl FieldType for Option<PrincipalKind> {
    const COLUMN: Column = Column::Text;
    const NULLABLE: bool = true;
    fn value(&self) -> Value<'_> {
        Value::Text(self.map(PrincipalKind::name))
    }
    fn read<R: ReadColumns>(row: &mut R, index: usize) -> Result<Self, R::Error> {
        let Some(name) = row.text(index)? else { return Ok(None) };
        PrincipalKind::from_name(&name).map(Some).ok_or_else(|| row.invalid(index, format!("unknown value {name:?}")))
    }
}

/// Unix milliseconds, rounded down (also before 1970): how a record's `ts` is hashed and stored.
pub fn unix_millis(at: OffsetDateTime) -> i64 {
    let millis = at.unix_timestamp_nanos().div_euclid(1_000_000);
    i64::try_from(millis).unwrap_or(if millis < 0 { i64::MIN } else { i64::MAX })
}

/// Unix milliseconds, rounded up: stored times are whole milliseconds, so `ts >= at` and `ts < at`
/// hold exactly when they hold for the rounded-up value.
pub fn unix_millis_ceil(at: OffsetDateTime) -> i64 {
    let sub_milli = at.unix_timestamp_nanos().rem_euclid(1_000_000) != 0;
    unix_millis(at).saturating_add(i64::from(sub_milli))
}

/// The time `millis` Unix milliseconds stand for, if it is one `OffsetDateTime` can hold.
pub fn from_unix_millis(millis: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok()
}

/// Declares the audit record: the struct, and from the same list its field table, its values and
/// its reading from a stored row. Fields are listed in canonical order, `hash` last.
macro_rules! audit_record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $type:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $type, )*
        }

        impl $name {
            /// The field table: every field in canonical order, `hash` last.
            pub const FIELDS: [$crate::fields::Field; [$(stringify!($field)),*].len()] = [$(
                $crate::fields::Field {
                    name: stringify!($field),
                    column: <$type as $crate::fields::FieldType>::COLUMN,
                    nullable: <$type as $crate::fields::FieldType>::NULLABLE,
                },
            )*];

            /// Each field's value, in the order of [`Self::FIELDS`].
            pub fn values(&self) -> [$crate::fields::Value<'_>; [$(stringify!($field)),*].len()] {
                [$( $crate::fields::FieldType::value(&self.$field), )*]
            }

            /// A record from a stored row whose columns are in the order of [`Self::FIELDS`].
            pub fn read<R: $crate::fields::ReadColumns>(row: &mut R) -> Result<$name, R::Error> {
                let mut columns = 0..;
                Ok($name {
                    $( $field: <$type as $crate::fields::FieldType>::read(row, columns.next().unwrap_or_default())?, )*
                })
            }
        }
    };
}
pub(crate) use audit_record;

/// The field names, comma-separated: the column list of every statement that reads or writes a
/// whole record.
pub fn column_list() -> String {
    crate::AuditRecord::FIELDS.map(|field| field.name).join(", ")
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::AuditRecord;

    /// A stored row as the values a record wrote, read back column by column.
    struct Row(Vec<Value<'static>>);

    impl ReadColumns for Row {
        type Error = String;
        fn count(&mut self, index: usize) -> Result<Option<u64>, String> {
            match self.0[index] {
                Value::Count(count) => Ok(count),
                other => Err(format!("{index}: {other:?} is no count")),
            }
        }
        fn status(&mut self, index: usize) -> Result<i64, String> {
            match self.0[index] {
                Value::Status(status) => Ok(i64::from(status)),
                Value::Count(Some(count)) => Ok(count as i64),
                other => Err(format!("{index}: {other:?} is no status")),
            }
        }
        fn millis(&mut self, index: usize) -> Result<i64, String> {
            match self.0[index] {
                Value::Millis(millis) => Ok(millis),
                other => Err(format!("{index}: {other:?} is no time")),
            }
        }
        fn text(&mut self, index: usize) -> Result<Option<String>, String> {
            match self.0[index] {
                Value::Text(text) => Ok(text.map(str::to_string)),
                other => Err(format!("{index}: {other:?} is no text")),
            }
        }
        fn flag(&mut self, index: usize) -> Result<bool, String> {
            match self.0[index] {
                Value::Flag(flag) => Ok(flag),
                other => Err(format!("{index}: {other:?} is no flag")),
            }
        }
        fn invalid(&self, index: usize, why: String) -> String {
            format!("invalid {}: {why}", AuditRecord::FIELDS[index].name)
        }
    }

    fn stored(record: &AuditRecord) -> Row {
        let leak = |text: &str| -> &'static str { Box::leak(text.to_string().into_boxed_str()) };
        Row(record
            .values()
            .into_iter()
            .map(|value| match value {
                Value::Text(text) => Value::Text(text.map(leak)),
                Value::Count(count) => Value::Count(count),
                Value::Status(status) => Value::Status(status),
                Value::Millis(millis) => Value::Millis(millis),
                Value::Flag(flag) => Value::Flag(flag),
            })
            .collect())
    }

    fn index_of(name: &str) -> usize {
        AuditRecord::FIELDS.iter().position(|field| field.name == name).unwrap()
    }

    #[test]
    fn a_record_reads_back_from_its_values() {
        let record = crate::testing::chain("n", 3).remove(2);
        assert_eq!(AuditRecord::read(&mut stored(&record)), Ok(record));
    }

    #[test]
    fn the_table_says_how_each_field_is_stored() {
        let field = |name: &str| AuditRecord::FIELDS[index_of(name)];
        assert_eq!(field("seq"), Field { name: "seq", column: Column::Count, nullable: false });
        assert_eq!(field("ts"), Field { name: "ts", column: Column::Millis, nullable: false });
        assert_eq!(field("kind"), Field { name: "kind", column: Column::Text, nullable: false });
        assert_eq!(field("status"), Field { name: "status", column: Column::Status, nullable: false });
        assert_eq!(field("ttfb_ms"), Field { name: "ttfb_ms", column: Column::Count, nullable: true });
        assert_eq!(field("content"), Field { name: "content", column: Column::Text, nullable: true });
        assert_eq!(field("stream"), Field { name: "stream", column: Column::Flag, nullable: false });
        assert!(column_list().starts_with("seq, ts, node, kind, request_id,"), "{}", column_list());
        assert!(column_list().ends_with(", prev_hash, hash"), "{}", column_list());
    }

    #[test]
    fn values_no_record_holds_are_refused_by_name() {
        let record = crate::testing::chain("n", 1).remove(0);
        let mut row = stored(&record);
        row.0[index_of("kind")] = Value::Text(Some("Request"));
        assert_eq!(AuditRecord::read(&mut row), Err("invalid kind: unknown value \"Request\"".into()));
        let mut row = stored(&record);
        row.0[index_of("node")] = Value::Text(None);
        assert_eq!(AuditRecord::read(&mut row), Err("invalid node: NULL in a required column".into()));
        let mut row = stored(&record);
        row.0[index_of("status")] = Value::Count(Some(70_000));
        assert_eq!(AuditRecord::read(&mut row), Err("invalid status: status 70000 out of range".into()));
    }

    #[test]
    fn milliseconds_round_down_to_store_and_up_to_compare() {
        let exact = datetime!(2025-06-10 12:30:00.123 UTC);
        assert_eq!((unix_millis(exact), unix_millis_ceil(exact)), (1_749_558_600_123, 1_749_558_600_123));
        let finer = datetime!(2025-06-10 12:30:00.123_000_001 UTC);
        assert_eq!((unix_millis(finer), unix_millis_ceil(finer)), (1_749_558_600_123, 1_749_558_600_124));
        let before_epoch = datetime!(1969-12-31 23:59:59.999_5 UTC);
        assert_eq!((unix_millis(before_epoch), unix_millis_ceil(before_epoch)), (-1, 0));
        assert_eq!(from_unix_millis(unix_millis(exact)), Some(exact));
    }
}
