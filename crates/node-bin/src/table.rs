//! A tiny aligned-table formatter for the client subcommands.

use std::fmt;

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: pad on the right.
    Left,
    /// Numbers: pad on the left, so decimal places line up better.
    Right,
}

/// Rows of cells under a header, printed with columns padded to their widest
/// cell and separated by two spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers, all left-aligned.
    pub fn new<I, S>(headers: I) -> Table
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let headers: Vec<String> = headers.into_iter().map(Into::into).collect();
        let aligns = vec![Align::Left; headers.len()];
        Table {
            headers,
            aligns,
            rows: Vec::new(),
        }
    }

    /// Sets column `index`'s alignment (ignored if out of range).
    pub fn align(mut self, index: usize, align: Align) -> Table {
        if let Some(slot) = self.aligns.get_mut(index) {
            *slot = align;
        }
        self
    }

    /// Appends a row; missing cells print empty, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|col| {
                std::iter::once(&self.headers[col])
                    .chain(self.rows.iter().map(|row| &row[col]))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut out = String::new();
            for (col, cell) in line.iter().enumerate() {
                if col > 0 {
                    out.push_str("  ");
                }
                let pad = widths[col] - cell.chars().count();
                match self.aligns[col] {
                    Align::Left => {
                        out.push_str(cell);
                        out.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        out.extend(std::iter::repeat_n(' ', pad));
                        out.push_str(cell);
                    }
                }
            }
            writeln!(f, "{}", out.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_pad_to_the_widest_cell() {
        let mut table = Table::new(["SIDE", "PRICE", "QTY"]).align(1, Align::Right);
        table.row(["bid", "100.5", "2"]);
        table.row(["ask", "99", "10"]);
        let expected = "\
SIDE  PRICE  QTY
bid   100.5  2
ask      99  10
";
        assert_eq!(table.to_string(), expected);
    }

    #[test]
    fn short_rows_are_padded_and_long_rows_cut() {
        let mut table = Table::new(["A", "B"]);
        table.row(["x"]);
        table.row(["1", "2", "3"]);
        assert_eq!(table.to_string(), "A  B\nx\n1  2\n");
    }

    #[test]
    fn width_counts_characters_not_bytes() {
        let mut table = Table::new(["K", "V"]);
        table.row(["é", "1"]);
        assert_eq!(table.to_string(), "K  V\né  1\n");
    }

    #[test]
    fn an_empty_table_prints_its_header() {
        let table = Table::new(["ONLY"]);
        assert!(table.is_empty());
        assert_eq!(table.to_string(), "ONLY\n");
    }
}
