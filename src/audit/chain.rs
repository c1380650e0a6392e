//! Tamper evidence for the JSON audit log: each line carries the SHA-256
//! of the line before it (`prev_sha256`), so an edited, removed or
//! reordered record breaks the chain at the next line. A file starts with
//! an anchor record that names the hash it continues from (all zeros for
//! a new trail, the old file's last line after a rotation). Removing lines
//! at the very end cannot be seen from the file alone.

use std::io::{self, BufRead};
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::SCHEMA_VERSION;

/// The link of the first anchor of a trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 of a line (without its newline), in hex.
pub fn hash(line: impl AsRef<[u8]>) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Every record is hashed on the audit writer's thread, which every
    // audited command waits for: no allocation per byte.
    let mut hex = String::with_capacity(64);
    for b in Sha256::digest(line.as_ref()) {
        hex.push(HEX[usize::from(b >> 4)] as char);
        hex.push(HEX[usize::from(b & 0xf)] as char);
    }
    hex
}

/// A record's line with its link to the previous one.
pub fn link(mut record: Value, prev: &str) -> String {
    if let Value::Object(map) = &mut record {
        map.insert("prev_sha256".into(), Value::String(prev.to_string()));
    }
    record.to_string()
}

/// A record's line rendered before its place in the chain is known: the
/// link is filled in by whoever writes the lines in order, so rendering
/// (the costly part) can happen anywhere.
pub struct Unlinked {
    line: String,
    /// Where the placeholder link starts in `line`.
    at: usize,
}

/// The key and opening quote of the link. A quote inside a value is always
/// escaped, so this can only be the record's own key.
const LINK_KEY: &str = "\"prev_sha256\":\"";

impl Unlinked {
    /// `line` as rendered with [`GENESIS`] for its link.
    pub fn new(line: String) -> Unlinked {
        let at = line.find(LINK_KEY).map(|i| i + LINK_KEY.len()).expect("every record line has a link");
        Unlinked { line, at }
    }

    /// Appends the line, linked to the line before it (whose hash is
    /// `prev`), to `out`.
    pub fn link_into(&self, prev: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.line.as_bytes()[..self.at]);
        out.extend_from_slice(prev.as_bytes());
        out.extend_from_slice(&self.line.as_bytes()[self.at + GENESIS.len()..]);
    }
}

/// The first line of a file: where its chain starts, and why.
pub fn anchor(at: &str, prev: &str, why: &str) -> String {
    link(json!({ "schema_version": SCHEMA_VERSION, "record": "anchor", "timestamp": at, "reason": why }), prev)
}

/// The hash of the file's last line, or None for an empty (or missing) file.
pub fn last_line_hash(path: &Path) -> io::Result<Option<String>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut last = None;
    for line in io::BufReader::new(file).split(b'\n') {
        let line = line?;
        if !line.is_empty() {
            last = Some(line);
        }
    }
    Ok(last.map(|l| hash(String::from_utf8_lossy(&l).as_bytes())))
}

/// Checks a JSON audit log: Ok(number of records) when the chain is whole,
/// else the first line where it breaks and why.
pub fn verify(path: &Path) -> Result<usize, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut prev_line: Option<&[u8]> = None;
    let mut records = 0;
    for (i, raw) in text.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        if raw.is_empty() {
            continue;
        }
        let line = std::str::from_utf8(raw).map_err(|_| format!("line {n}: not UTF-8: the file was altered"))?;
        let value: Value = serde_json::from_str(line).map_err(|e| format!("line {n}: not a JSON record ({e})"))?;
        let Some(prev) = value.get("prev_sha256").and_then(Value::as_str) else {
            return Err(format!("line {n}: no prev_sha256: not a corral audit record"));
        };
        match prev_line {
            None => {
                if value.get("record").and_then(Value::as_str) != Some("anchor") {
                    return Err(format!(
                        "line {n}: the file does not start with an anchor record: its first records were removed"
                    ));
                }
            }
            Some(before) => {
                if prev != hash(String::from_utf8_lossy(before).as_bytes()) {
                    return Err(format!(
                        "line {n} (request {}): its prev_sha256 does not match line {}: that line was edited, or records \
                         before line {n} were removed or reordered",
                        value.get("request_id").map(Value::to_string).unwrap_or_else(|| "-".into()),
                        n - 1
                    ));
                }
                records += 1;
            }
        }
        prev_line = Some(raw);
    }
    if prev_line.is_none() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_hash_is_sha256_in_lower_case_hex() {
        assert_eq!(super::hash(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(super::hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
