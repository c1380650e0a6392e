//! The sanitiser against arbitrary input. Its promises, checked from the
//! outside rather than with its own tables: the output is one line with no
//! control, no space but U+0020 and none of the characters that reorder or
//! hide text; every backslash starts an escape; and undoing the escapes
//! gives back exactly the input, so nothing was dropped or made ambiguous.
#![no_main]

use libfuzzer_sys::fuzz_target;

use corral::sanitise::{sanitise, sanitise_bytes};

/// Characters named in the sanitiser's contract that Rust's own character
/// classes (control, whitespace) do not cover.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200b}'..='\u{200f}'
            | '\u{061c}'
            | '\u{2060}'
            | '\u{feff}'
            | '\u{180e}'
            | '\u{00ad}'
            | '\u{e0000}'..='\u{e0fff}'
            | '\u{fe00}'..='\u{fe0f}'
    )
}

fn check_clean(out: &str) {
    for c in out.chars() {
        assert!(!c.is_control(), "control {c:?} in {out:?}");
        assert!(c == ' ' || !c.is_whitespace(), "whitespace {c:?} in {out:?}");
        assert!(!invisible(c), "invisible {c:?} in {out:?}");
    }
    assert!(out.lines().count() <= 1, "{out:?}");
}

/// Reverses the escapes into bytes, or panics at a backslash that starts
/// none.
fn unescape(out: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(out.len());
    let mut rest = out;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        if c != '\\' {
            bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            continue;
        }
        let (decoded, after): (Vec<u8>, &str) = match rest.as_bytes().first() {
            Some(b'\\') => (vec![b'\\'], &rest[1..]),
            Some(b't') => (vec![b'\t'], &rest[1..]),
            Some(b'n') => (vec![b'\n'], &rest[1..]),
            Some(b'r') => (vec![b'\r'], &rest[1..]),
            Some(b'x') => {
                let hex = rest.get(1..3).filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
                let hex = hex.unwrap_or_else(|| panic!("a bad \\x escape in {out:?}"));
                (vec![u8::from_str_radix(hex, 16).unwrap()], &rest[3..])
            }
            Some(b'u') => {
                let body = rest.strip_prefix("u{").and_then(|r| r.split_once('}'));
                let (hex, after) = body.unwrap_or_else(|| panic!("a bad \\u escape in {out:?}"));
                let c = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32);
                let c = c.unwrap_or_else(|| panic!("\\u{{{hex}}} is no character, in {out:?}"));
                assert!(hex.len() <= 6 && !hex.starts_with('0'), "\\u{{{hex}}} is not the canonical form");
                (c.encode_utf8(&mut [0; 4]).as_bytes().to_vec(), after)
            }
            _ => panic!("a lone backslash in {out:?}"),
        };
        bytes.extend_from_slice(&decoded);
        rest = after;
    }
    bytes
}

fuzz_target!(|data: &[u8]| {
    let out = sanitise_bytes(data);
    check_clean(&out);
    assert_eq!(unescape(&out), data, "{out:?}");

    let text = String::from_utf8_lossy(data);
    let out = sanitise(&text);
    check_clean(&out);
    assert_eq!(unescape(&out), text.as_bytes(), "{out:?}");
    if text.bytes().all(|b| b != b'\\' && (b == b' ' || b.is_ascii_graphic())) {
        assert_eq!(out, text, "printable ASCII is left alone");
    }
});
