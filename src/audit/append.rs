//! Appending records to an audit file so that each is in it whole or not at
//! all.
//!
//! A write that runs out of room (ENOSPC) stops part way through a line.
//! Left there, the torn line breaks the file for good: the next record is
//! appended onto it, the text line is malformed and the JSON chain fails at
//! that line forever. So the file is cut back to where it ended before the
//! batch that failed; and a file that starts with a torn line at its end (a
//! crash during a write) is cut back to its last whole line when opened.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// What an [`Appender`] needs of a file. A trait so that the rule can be
/// tried on a file that fails on cue.
pub trait Tail {
    /// One write at the end of the file; it may take only part of `bytes`.
    fn append(&mut self, bytes: &[u8]) -> io::Result<usize>;
    fn end(&self) -> io::Result<u64>;
    /// Cuts the file to `len` bytes.
    fn cut_to(&mut self, len: u64) -> io::Result<()>;
}

impl Tail for File {
    fn append(&mut self, bytes: &[u8]) -> io::Result<usize> {
        io::Write::write(self, bytes)
    }

    fn end(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    /// A device (/dev/null, /dev/full) keeps nothing that could be cut.
    fn cut_to(&mut self, len: u64) -> io::Result<()> {
        if self.metadata()?.is_file() {
            self.set_len(len)
        } else {
            Ok(())
        }
    }
}

/// Appends batches of whole lines: after a failed write the file is cut
/// back to where it ended before the batch, so it holds all of a batch or
/// none of it, and the next record never starts inside a torn one.
pub struct Appender<F> {
    pub file: F,
    /// Bytes of the current batch in the file.
    taken: u64,
    /// The current batch is to be taken back out, and has not been yet
    /// (cutting the file failed): nothing more is appended until it is.
    torn: bool,
}

impl<F: Tail> Appender<F> {
    pub fn new(file: F) -> Appender<F> {
        Appender { file, taken: 0, torn: false }
    }

    /// Starts a batch: what is appended from now on is taken back together.
    pub fn begin(&mut self) {
        if !self.torn {
            self.taken = 0;
        }
    }

    /// Appends all of `bytes`, in as many writes as the file needs. On a
    /// failure the whole batch is taken back out.
    pub fn append(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        self.cut()?;
        while !bytes.is_empty() {
            let error = match self.file.append(bytes) {
                Ok(0) => io::Error::from(io::ErrorKind::WriteZero),
                Ok(n) => {
                    self.taken += n as u64;
                    bytes = &bytes[n..];
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            return Err(match self.undo() {
                Ok(()) => error,
                Err(cut) => io::Error::new(
                    error.kind(),
                    format!("{error}; cutting off the torn record failed too ({cut}), so nothing more is written to the file until that succeeds"),
                ),
            });
        }
        Ok(())
    }

    /// Takes the current batch back out of the file.
    pub fn undo(&mut self) -> io::Result<()> {
        self.torn = self.taken > 0;
        self.cut()
    }

    fn cut(&mut self) -> io::Result<()> {
        if self.torn {
            let end = self.file.end()?;
            self.file.cut_to(end.saturating_sub(self.taken))?;
            self.torn = false;
            self.taken = 0;
        }
        Ok(())
    }
}

/// Where the last whole line of `file` ends: its length, unless a write cut
/// off part way left a torn line after it.
pub fn whole_length(file: &File) -> io::Result<u64> {
    let mut end = file.metadata()?.len();
    let mut buf = vec![0; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(newline) = chunk.iter().rposition(|b| *b == b'\n') {
            return Ok(start + newline as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file on a disk with `room` bytes left, whose cuts fail while
    /// `cuts_fail` is set.
    #[derive(Default)]
    struct Disk {
        bytes: Vec<u8>,
        room: usize,
        cuts_fail: bool,
    }

    impl Tail for Disk {
        fn append(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from_raw_os_error(nix::libc::ENOSPC));
            }
            let n = bytes.len().min(self.room);
            self.bytes.extend_from_slice(&bytes[..n]);
            self.room -= n;
            Ok(n)
        }

        fn end(&self) -> io::Result<u64> {
            Ok(self.bytes.len() as u64)
        }

        fn cut_to(&mut self, len: u64) -> io::Result<()> {
            if self.cuts_fail {
                return Err(io::Error::from_raw_os_error(nix::libc::EIO));
            }
            self.room += self.bytes.len() - len as usize;
            self.bytes.truncate(len as usize);
            Ok(())
        }
    }

    fn appender(room: usize) -> Appender<Disk> {
        Appender::new(Disk { room, ..Disk::default() })
    }

    #[test]
    fn a_write_short_of_room_leaves_the_file_as_it_was_before_the_batch() {
        let mut a = appender(20);
        a.begin();
        a.append(b"one\n").unwrap();
        a.begin();
        a.append(b"two\n").unwrap();
        let e = a.append(b"three is too long\n").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC));
        assert_eq!(a.file.bytes, b"one\n", "the batch of two and three is gone, torn line and all");

        a.file.room = 100;
        a.begin();
        a.append(b"four\n").unwrap();
        assert_eq!(a.file.bytes, b"one\nfour\n");
    }

    #[test]
    fn a_batch_taken_back_after_it_was_written_whole_is_gone() {
        let mut a = appender(100);
        a.begin();
        a.append(b"one\n").unwrap();
        a.begin();
        a.append(b"two\n").unwrap();
        a.append(b"three\n").unwrap();
        a.undo().unwrap();
        assert_eq!(a.file.bytes, b"one\n");
        a.undo().unwrap();
        assert_eq!(a.file.bytes, b"one\n", "a batch is taken back once");
    }

    #[test]
    fn nothing_is_appended_onto_a_torn_line_that_could_not_be_cut_off() {
        let mut a = appender(6);
        a.begin();
        a.append(b"one\n").unwrap();
        a.file.cuts_fail = true;
        a.begin();
        let e = a.append(b"two\n").unwrap_err();
        assert!(e.to_string().contains("cutting off the torn record failed too"), "{e}");
        assert_eq!(a.file.bytes, b"one\ntw");

        a.file.room = 100;
        a.begin();
        assert!(a.append(b"three\n").is_err(), "refused while the torn line stays");
        assert_eq!(a.file.bytes, b"one\ntw");

        a.file.cuts_fail = false;
        a.begin();
        a.append(b"three\n").unwrap();
        assert_eq!(a.file.bytes, b"one\nthree\n");
    }

    #[test]
    fn a_file_whose_last_line_is_torn_ends_at_the_line_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let length = |content: &[u8]| {
            std::fs::File::create(&path).unwrap().write_all(content).unwrap();
            whole_length(&std::fs::File::open(&path).unwrap()).unwrap()
        };
        assert_eq!(length(b""), 0);
        assert_eq!(length(b"one\ntwo\n"), 8);
        assert_eq!(length(b"one\ntw"), 4);
        assert_eq!(length(b"torn"), 0);
        let mut long = vec![b'x'; 200_000];
        long.extend_from_slice(b"\n");
        long.extend(vec![b'y'; 150_000]);
        assert_eq!(length(&long), 200_001, "found across reads");
    }
}
