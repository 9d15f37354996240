//! Left-aligned columns for the terminal, as `ss` prints them. Widths are
//! display columns (`unicode-width`, the width terminals give each
//! character), not bytes: a command or unit name in another script lines up
//! with the rest.

use std::io;

use unicode_width::UnicodeWidthStr as _;

/// Writes `rows` under `header` (left out when `with_header` is false),
/// each column as wide as its widest cell plus two spaces; the last column
/// is not padded and no line ends in spaces.
pub fn write(
    out: &mut impl io::Write,
    header: &[&str],
    rows: &[Vec<String>],
    with_header: bool,
) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.width());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (cell, w) in cells.zip(&widths) {
            s.push_str(cell);
            s.extend(std::iter::repeat_n(' ', w - cell.width() + 2));
        }
        s.truncate(s.trim_end().len());
        s
    };
    if with_header {
        writeln!(out, "{}", line(&mut header.iter().copied()))?;
    }
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(header: &[&str], rows: &[&[&str]], with_header: bool) -> String {
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| r.iter().map(|c| (*c).to_owned()).collect())
            .collect();
        let mut out = Vec::new();
        write(&mut out, header, &rows, with_header).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The display column where `word` starts on `line`.
    fn column_of(line: &str, word: &str) -> usize {
        let at = line
            .find(word)
            .unwrap_or_else(|| panic!("{word} not in {line:?}"));
        line[..at].width()
    }

    #[test]
    fn columns_line_up_in_display_width_whatever_the_script() {
        // Multi-byte characters of width 1 (é, ü), width 2 (CJK) and a
        // plain ASCII row: bytes and display columns differ in each.
        let header = ["PROCESS", "UNIT", "PORT"];
        let rows: [&[&str]; 3] = [
            &["nginx(1)", "web.service", "80"],
            &["café-ü(2)", "größe.service", "81"],
            &["サーバ(3)", "サービス.service", "82"],
        ];
        let out = text(&header, &rows, true);
        let lines: Vec<&str> = out.lines().collect();
        let port = column_of(lines[0], "PORT");
        let unit = column_of(lines[0], "UNIT");
        for (line, (unit_cell, port_cell)) in
            lines[1..]
                .iter()
                .zip([("web", "80"), ("größe", "81"), ("サービス", "82")])
        {
            assert_eq!(column_of(line, unit_cell), unit, "{out}");
            assert_eq!(column_of(line, port_cell), port, "{out}");
        }
        assert_eq!(unit, "サーバ(3)".width() + 2, "{out}");
    }

    #[test]
    fn no_header_and_no_trailing_spaces() {
        let out = text(&["A", "B"], &[&["x", ""], &["yy", "z"]], false);
        assert_eq!(out, "x\nyy  z\n");
    }
}
