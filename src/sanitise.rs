//! Making outsider-controlled text safe to show: in an audit record, in a
//! response a client prints, in a log line.
//!
//! A target name, a user name, a process name or a reason can come from
//! anyone who can reach the socket or name a process. Rendered raw, a
//! newline (or a Unicode line separator, which log viewers break on) would
//! forge a second record, a tab would add a field, an escape sequence or a
//! bidi override would change what an operator sees in a terminal, and an
//! invisible character would make two different names look the same. Every
//! such character is replaced by a visible escape, never dropped, so the
//! record still shows that something odd was sent.
//!
//! What is escaped is whole Unicode classes rather than a list of known
//! tricks: all controls (Cc), all format characters (Cf: bidi controls,
//! zero-width characters, the BOM, tag characters, interlinear annotation),
//! the line and paragraph separators (Zl, Zp), every space but the ASCII one
//! (Zs: a reader cannot tell them from the space that separates fields), and
//! the characters Unicode says to render as nothing when unsupported
//! (Default_Ignorable_Code_Point: variation selectors, Hangul fillers, ...).
//! Look-alike letters (a Cyrillic `а` for a Latin `a`) are left alone: they
//! are visible, and telling them apart is a matter of comparing names, not
//! of keeping a line honest.

use std::fmt::Write;

/// Escapes controls and every character `hidden` names; a backslash is doubled so that an escape
/// in the output can only have come from here.
pub fn sanitise(text: &str) -> String {
    escape(text, true)
}

/// Escapes what a terminal would act on or hide, as [`sanitise`] does, but
/// leaves backslashes alone: for text on its way to a screen that corrald
/// has (or should have) escaped already, so a `\x1b` it sent shows as
/// itself rather than as `\\x1b`.
pub fn neutralise(text: &str) -> String {
    escape(text, false)
}

/// The first `chars` characters of `text`, escaped as [`sanitise`] does,
/// with the full length in bytes when it was cut: how an answer or a log
/// line shows a value an outsider sent, which may be megabytes long.
pub fn excerpt(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}... ({} bytes)", sanitise(&text[..cut]), text.len()),
        None => sanitise(text),
    }
}

fn escape(text: &str, double_backslash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' if double_backslash => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if hidden(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters beyond ASCII that break a line, reorder it, hide in it, or
/// pass for a space. The classes are as of Unicode 15; a character a later
/// version adds to them is most likely in a range reserved for it and
/// escaped here already (U+2065, U+FFF0..U+FFF8, U+E0000..U+E0FFF).
fn hidden(c: char) -> bool {
    matches!(
        c as u32,
        // C1 controls (NEL and the 8-bit CSI among them).
        0x80..=0x9f
            // Spaces other than U+0020, and the blank Braille pattern that
            // renders as one.
            | 0xa0
            | 0x1680
            | 0x2000..=0x200a
            | 0x202f
            | 0x205f
            | 0x3000
            | 0x2800
            // Line and paragraph separators.
            | 0x2028..=0x2029
            // Format characters (Cf).
            | 0xad
            | 0x600..=0x605
            | 0x61c
            | 0x6dd
            | 0x70f
            | 0x890..=0x891
            | 0x8e2
            | 0x180e
            | 0x200b..=0x200f
            | 0x202a..=0x202e
            | 0x2060..=0x206f
            | 0xfeff
            | 0xfff9..=0xfffb
            | 0x110bd
            | 0x110cd
            | 0x13430..=0x1343f
            | 0x1bca0..=0x1bca3
            | 0x1d173..=0x1d17a
            // The rest of Default_Ignorable_Code_Point: the combining
            // grapheme joiner, Hangul fillers, Khmer inherent vowels,
            // variation selectors, and the planes kept for tags.
            | 0x34f
            | 0x115f..=0x1160
            | 0x17b4..=0x17b5
            | 0x180b..=0x180f
            | 0x3164
            | 0xfe00..=0xfe0f
            | 0xffa0
            | 0xfff0..=0xfff8
            | 0xe0000..=0xe0fff
    )
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

    #[test]
    fn separators_invisibles_and_odd_spaces_are_escaped() {
        assert_eq!(sanitise("one\u{2028}two\u{2029}"), "one\\u{2028}two\\u{2029}");
        assert_eq!(sanitise("next\u{85}line"), "next\\u{85}line");
        for c in ['\u{200b}', '\u{200c}', '\u{200d}', '\u{2060}', '\u{feff}', '\u{180e}', '\u{ad}'] {
            assert_eq!(sanitise(&format!("we{c}b")), format!("we\\u{{{:x}}}b", c as u32), "{c:?}");
        }
        // Tag characters spell hidden ASCII; a variation selector or a
        // Hangul filler renders as nothing.
        assert_eq!(sanitise("a\u{e0041}\u{e007f}"), "a\\u{e0041}\\u{e007f}");
        assert_eq!(sanitise("a\u{fe0f}\u{3164}\u{115f}\u{34f}"), "a\\u{fe0f}\\u{3164}\\u{115f}\\u{34f}");
        // Prepended marks and interlinear annotation change how the text
        // around them reads.
        assert_eq!(sanitise("\u{600}1\u{fff9}x\u{fffb}"), "\\u{600}1\\u{fff9}x\\u{fffb}");
        // A space that is not U+0020 would pass for the one that separates
        // the slots of a text record.
        assert_eq!(sanitise("web\u{a0}1\u{2003}2\u{3000}3\u{2800}"), "web\\u{a0}1\\u{2003}2\\u{3000}3\\u{2800}");
        assert_eq!(sanitise("a b"), "a b");
    }

    #[test]
    fn every_format_and_separator_character_is_escaped() {
        // Unicode 15's Cf, Zl, Zp and non-ASCII Zs, range by range.
        let classes = [
            (0xad, 0xad),
            (0x600, 0x605),
            (0x61c, 0x61c),
            (0x6dd, 0x6dd),
            (0x70f, 0x70f),
            (0x890, 0x891),
            (0x8e2, 0x8e2),
            (0x180e, 0x180e),
            (0x200b, 0x200f),
            (0x202a, 0x202e),
            (0x2060, 0x2064),
            (0x2066, 0x206f),
            (0xfeff, 0xfeff),
            (0xfff9, 0xfffb),
            (0x110bd, 0x110bd),
            (0x110cd, 0x110cd),
            (0x13430, 0x1343f),
            (0x1bca0, 0x1bca3),
            (0x1d173, 0x1d17a),
            (0xe0001, 0xe0001),
            (0xe0020, 0xe007f),
            (0x2028, 0x2029),
            (0xa0, 0xa0),
            (0x1680, 0x1680),
            (0x2000, 0x200a),
            (0x202f, 0x202f),
            (0x205f, 0x205f),
            (0x3000, 0x3000),
        ];
        for (lo, hi) in classes {
            for c in (lo..=hi).filter_map(char::from_u32) {
                assert_eq!(sanitise(&c.to_string()), format!("\\u{{{:x}}}", c as u32), "U+{:04X}", c as u32);
            }
        }
        // Visible text stays as it is, the ellipsis among it: the audit
        // trail's truncation marker relies on `\u{2026}` never coming from
        // the sanitiser.
        for text in ["ünïcødé", "漢字", "مرحبا", "שלום", "emoji 🦀", "…", "a-b_c.d/e:f"] {
            assert_eq!(sanitise(text), text);
        }
    }
}
