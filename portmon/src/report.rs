//! Errors as people read them: one line, every cause after a colon.

/// An error with its sources, on one line.
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        // The verifier's log can be thousands of lines; its first line says enough here.
        line.push_str(": ");
        line.push_str(text.lines().next().unwrap_or(""));
        source = s.source();
    }
    line
}
