//! Reading usage figures so that no row can make a read fail: the `usage_sum` aggregate, and
//! readers of result columns that take what they find.
//!
//! SQLite's own `SUM` fails with "integer overflow" once a sum passes `i64::MAX` (and `TOTAL`
//! answers in floating point, which is not exact), and `SUM(a) + SUM(b)` turns into a REAL when
//! the `+` overflows. A handful of rows at the limit is enough — one model server reporting
//! 2⁶⁴ − 1 tokens — and the server reads these sums at start-up. So usage is summed with
//! `usage_sum`, an aggregate of our own: it adds in Rust, saturating at
//! [`USAGE_MAX`](portcullis_store::USAGE_MAX), inside SQLite's `GROUP BY` (no row is read into
//! memory), and it never fails.
//!
//! A value that is not a count (negative, REAL, text, NULL; the schema refuses them, so only a
//! damaged file or a hand edit can hold one) is taken as the nearest count, 0 for anything
//! negative or non-numeric, and counted; the read that met it logs one warning with the count
//! ([`Repairs`]).

use std::cell::Cell;

use portcullis_store::{USAGE_MAX, usage_add, usage_count_from_column, usage_count_to_column};
use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};

thread_local! {
    /// Values read as the nearest count on this thread since the last [`Repairs::start`]. The
    /// aggregate runs inside `sqlite3_step`, on the thread that runs the statement, so a read
    /// sees exactly its own repairs.
    static REPAIRED: Cell<u64> = const { Cell::new(0) };
}

/// Registers `usage_sum` on a connection.
pub(crate) fn register(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_aggregate_function("usage_sum", 1, flags, UsageSum)
}

/// `usage_sum(x)`: the sum of a count column, saturated at `USAGE_MAX`; an INTEGER, 0 for no
/// rows.
struct UsageSum;

impl Aggregate<u64, i64> for UsageSum {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<u64> {
        Ok(0)
    }

    fn step(&self, ctx: &mut Context<'_>, sum: &mut u64) -> rusqlite::Result<()> {
        *sum = usage_add(*sum, count_of(ctx.get_raw(0)));
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, sum: Option<u64>) -> rusqlite::Result<i64> {
        Ok(usage_count_to_column(sum.unwrap_or(0)))
    }
}

/// A stored count or a sum, as the nearest count; anything but a non-negative INTEGER is noted
/// as a repair.
pub(crate) fn count_of(value: ValueRef<'_>) -> u64 {
    let nearest = match value {
        ValueRef::Integer(value) => match usage_count_from_column(value) {
            Some(count) => return count,
            None => 0,
        },
        // `as` saturates: NaN and negatives to 0, huge values to u64::MAX (then capped).
        ValueRef::Real(value) => (value as u64).min(USAGE_MAX),
        ValueRef::Text(text) => std::str::from_utf8(text)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .and_then(usage_count_from_column)
            .unwrap_or(0),
        ValueRef::Null | ValueRef::Blob(_) => 0,
    };
    REPAIRED.with(|repaired| repaired.set(repaired.get().saturating_add(1)));
    nearest
}

/// Column `index` of a result row as a count (see [`count_of`]).
pub(crate) fn count(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    Ok(count_of(row.get_ref(index)?))
}

/// A key id, team or model name as text: one that is not valid UTF-8 (or not text at all) is
/// read lossily and noted as a repair, so a damaged label cannot fail a read either. NULL is
/// `None`.
pub(crate) fn label(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<String>> {
    let text = match row.get_ref(index)? {
        ValueRef::Null => return Ok(None),
        ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => return Ok(Some(text.to_owned())),
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        },
        ValueRef::Blob(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        ValueRef::Integer(value) => value.to_string(),
        ValueRef::Real(value) => value.to_string(),
    };
    REPAIRED.with(|repaired| repaired.set(repaired.get().saturating_add(1)));
    Ok(Some(text))
}

/// Counts the repairs of one read, on its thread, and logs them once.
pub(crate) struct Repairs {
    what: &'static str,
}

impl Repairs {
    /// Starts counting for the read named `what` (a log field).
    pub(crate) fn start(what: &'static str) -> Repairs {
        REPAIRED.with(|repaired| repaired.set(0));
        Repairs { what }
    }

    /// How many values were repaired since [`Repairs::start`]; logs a warning if any were.
    pub(crate) fn finish(self) -> u64 {
        let repaired = REPAIRED.with(|repaired| repaired.replace(0));
        if repaired > 0 {
            tracing::warn!(
                read = self.what,
                values = repaired,
                "usage rows hold values that are not counts (negative, not integers, or not UTF-8); read as the \
                 nearest count (0 for negative or non-numeric values)"
            );
        }
        repaired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        register(&conn).unwrap();
        conn
    }

    /// `usage_sum` over `values` (an SQL `VALUES` list), and how many of them were repaired.
    fn sum_of(conn: &Connection, values: &str) -> (i64, u64) {
        let repairs = Repairs::start("test");
        let sum = conn.query_row(&format!("SELECT usage_sum(column1) FROM (VALUES {values})"), [], |row| row.get(0));
        (sum.unwrap(), repairs.finish())
    }

    #[test]
    fn sums_saturate_instead_of_overflowing() {
        let conn = connection();
        let max = i64::MAX;
        assert_eq!(sum_of(&conn, "(1), (2), (3)"), (6, 0));
        assert_eq!(sum_of(&conn, &format!("({max}), ({max})")), (max, 0));
        assert_eq!(sum_of(&conn, &format!("({max}), (1)")), (max, 0));
        assert_eq!(sum_of(&conn, &format!("({}), (1)", max - 1)), (max, 0), "exact up to the limit");
        let many = vec![format!("({max})"); 1000].join(", ");
        assert_eq!(sum_of(&conn, &many), (max, 0));
        // SQLite's own SUM fails on the same rows.
        let builtin: rusqlite::Result<i64> =
            conn.query_row(&format!("SELECT SUM(column1) FROM (VALUES ({max}), ({max}))"), [], |row| row.get(0));
        assert!(builtin.is_err(), "{builtin:?}");
    }

    #[test]
    fn values_that_are_not_counts_read_as_the_nearest_count_and_are_counted() {
        let conn = connection();
        // A negative value adds nothing, whatever else the group holds.
        assert_eq!(sum_of(&conn, "(5), (-3)"), (5, 1));
        assert_eq!(sum_of(&conn, &format!("({}), ({})", i64::MIN, i64::MIN)), (0, 2));
        // A REAL (what an overflowing `SUM(a) + SUM(b)` gave) is truncated and saturated.
        assert_eq!(sum_of(&conn, "(2.9), (1.8e19)"), (i64::MAX, 2));
        assert_eq!(sum_of(&conn, "(-1.5), (1e308 * 10)"), (i64::MAX, 2), "minus a half and infinity");
        assert_eq!(sum_of(&conn, "(' 42 '), ('forty'), (NULL), (x'01')"), (42, 4));
        // No rows is 0, not NULL.
        let empty: i64 = conn.query_row("SELECT usage_sum(1) WHERE 0", [], |row| row.get(0)).unwrap();
        assert_eq!(empty, 0);
    }

    #[test]
    fn result_columns_of_any_type_read_as_counts_and_labels() {
        let conn = connection();
        let repairs = Repairs::start("test");
        let read = conn
            .query_row("SELECT 7, -7, 9.3e18, 'key', CAST(x'6BFF' AS TEXT), NULL, 12", [], |row| {
                Ok((
                    [count(row, 0)?, count(row, 1)?, count(row, 2)?],
                    [label(row, 3)?, label(row, 4)?, label(row, 5)?, label(row, 6)?],
                ))
            })
            .unwrap();
        assert_eq!(read.0, [7, 0, USAGE_MAX]);
        assert_eq!(read.1, [Some("key".into()), Some("k\u{FFFD}".into()), None, Some("12".into())]);
        assert_eq!(repairs.finish(), 4, "-7, the REAL, the broken text and the integer label");
    }
}
