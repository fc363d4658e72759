//! Rows a write transaction appends to log tables (the outbox, a saga's timeline), held back
//! until it commits and then inserted with a multi-row statement per table (a few when there are
//! many rows). A consumer applying a batch of messages so writes its log rows in one or two round
//! trips, not one per message.
//!
//! Nothing may read an appended row inside the transaction before [`crate::db::Tx::flush`]
//! has run; the rows keep the order they were appended in, per table.

use crate::db::{self, Param, Tx};

/// A table rows are appended to, with the columns each row gives values for, in order. Both are
/// fixed in code, never taken from input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub table: &'static str,
    pub columns: &'static [&'static str],
}

/// Most rows per statement: well under both databases' limits on bound parameters.
const ROWS_PER_STATEMENT: usize = 64;

/// The rows a transaction holds back, per table (in the order the tables were first appended
/// to), each table's in the order they came.
#[derive(Debug, Default)]
pub(crate) struct Appends {
    tables: Vec<(Target, Vec<Vec<Param>>)>,
}

impl Appends {
    pub(crate) fn push(&mut self, target: Target, row: Vec<Param>) {
        assert_eq!(
            row.len(),
            target.columns.len(),
            "a row appended to {} must give every column",
            target.table
        );
        match self.tables.iter_mut().find(|(t, _)| *t == target) {
            Some((_, rows)) => rows.push(row),
            None => self.tables.push((target, vec![row])),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Inserts the rows held back, in order, on `tx` (see [`db::power_of_two_runs`]).
    pub(crate) async fn write(self, tx: &mut Tx) -> Result<(), sqlx::Error> {
        for (target, rows) in self.tables {
            let width = target.columns.len();
            for run in db::power_of_two_runs(&rows, ROWS_PER_STATEMENT) {
                static TEXTS: db::StatementTexts<(Target, usize)> = db::StatementTexts::new();
                let sql = TEXTS.get((target, run.len()), || {
                    let placeholders =
                        db::param_groups(run.len(), width, 1, ", ", |p| format!("({p})"));
                    format!(
                        "INSERT INTO {} ({}) VALUES {placeholders}",
                        target.table,
                        target.columns.join(", ")
                    )
                });
                let query =
                    (run.iter().flatten()).fold(sqlx::query(sql), |q, p| p.clone().bind_to(q));
                query.execute(&mut *tx).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: Target = Target {
        table: "log",
        columns: &["a", "b"],
    };
    const OTHER: Target = Target {
        table: "other",
        columns: &["c"],
    };

    #[test]
    fn rows_are_gathered_per_table_in_the_order_they_came() {
        let mut appends = Appends::default();
        appends.push(LOG, vec!["x".into(), 1.into()]);
        appends.push(LOG, vec!["y".into(), 2.into()]);
        appends.push(OTHER, vec![Param::Text(None)]);
        appends.push(LOG, vec!["z".into(), 3.into()]);
        let tables: Vec<(&str, &[Vec<Param>])> = appends
            .tables
            .iter()
            .map(|(t, rows)| (t.table, rows.as_slice()))
            .collect();
        let log: Vec<Vec<Param>> = vec![
            vec!["x".into(), 1.into()],
            vec!["y".into(), 2.into()],
            vec!["z".into(), 3.into()],
        ];
        let other = vec![vec![Param::Text(None)]];
        assert_eq!(
            tables,
            [("log", log.as_slice()), ("other", other.as_slice())]
        );
    }

    #[test]
    #[should_panic(expected = "must give every column")]
    fn a_row_missing_a_column_is_refused() {
        Appends::default().push(LOG, vec!["x".into()]);
    }
}
