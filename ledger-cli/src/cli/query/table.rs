//! The text table the questions print.

use std::fmt;

#[derive(Debug, Clone, Copy)]
pub(super) enum Align {
    Left,
    Right,
}

/// A text table: a header, columns as wide as their widest cell, amounts
/// and counts right-aligned so that their digits line up.
pub(super) struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(
            cells.len(),
            self.columns.len(),
            "a row has one cell per column"
        );
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header: Vec<String> = self
            .columns
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|column| {
                std::iter::once(&header)
                    .chain(&self.rows)
                    .map(|row| row[column].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column > 0 {
                    line.push_str("  ");
                }
                let width = widths[column];
                match self.columns[column].1 {
                    Align::Left => line.push_str(&format!("{cell:<width$}")),
                    Align::Right => line.push_str(&format!("{cell:>width$}")),
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_amounts_right_and_text_left() {
        let mut table = Table::new(&[("ACCOUNT", Align::Left), ("BALANCE", Align::Right)]);
        table.row(vec!["alice".to_owned(), "1000.00".to_owned()]);
        table.row(vec!["bob-the-builder".to_owned(), "-5.50".to_owned()]);
        assert_eq!(
            table.to_string(),
            "ACCOUNT          BALANCE\n\
             alice            1000.00\n\
             bob-the-builder    -5.50\n"
        );
    }
}
