//! Making outsider-controlled text safe to show: in an audit record, in a
//! response a client prints, in a log line.
//!
//! A target name, a user name, a process name or a reason can come from
//! anyone who can reach the socket or name a process. Rendered raw, a
//! newline would forge a second record, a tab would add a field, and an
//! escape sequence or a bidi override would change what an operator sees in
//! a terminal. Every such character is replaced by a visible escape, never
//! dropped, so the record still shows that something odd was sent.

use std::fmt::Write;

/// Escapes controls and bidi overrides; a backslash is doubled so that an
/// escape in the output can only have come from here.
pub fn sanitise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            // C1 controls (the 8-bit CSI among them), bidi embeddings,
            // overrides and isolates, and the invisible marks that steer
            // them.
            c if ('\u{80}'..='\u{9f}').contains(&c)
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}') =>
            {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Bytes that may not be UTF-8 (arguments as sent): valid runs are
/// sanitised, invalid bytes shown as `\xNN`.
pub fn sanitise_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        out.push_str(&sanitise(chunk.valid()));
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_escaped_visibly() {
        assert_eq!(sanitise("a\tb\nc\rd"), "a\\tb\\nc\\rd");
        assert_eq!(sanitise("\u{1b}[31mred"), "\\x1b[31mred");
        assert_eq!(sanitise("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(sanitise("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(sanitise("back\\slash"), "back\\\\slash");
        assert_eq!(sanitise("ünïcødé"), "ünïcødé");
        assert_eq!(sanitise_bytes(b"ok\xff\xfe"), "ok\\xff\\xfe");
    }
}
