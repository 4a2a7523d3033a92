//! The ping data rping's client puts in its source buffer, and C-string helpers.
//!
//! Each ping's buffer is `"rdma-ping-N: "` (as `snprintf` writes it into `size` bytes)
//! followed by ASCII letters cycling from `start` through `'A'..='z'`, with a NUL in the last
//! byte; `start` moves one letter on per ping (wrapping from `'z'` to `'A'`). The server
//! echoes everything up to and including the first NUL, so the client's `-V` compares all
//! `size` bytes.

/// The smallest `-S` rping accepts. rping computes it as
/// `sizeof(stringify(INT_MAX)) + sizeof("rdma-ping-%d: ")`; its source does not include
/// `<limits.h>`, so `INT_MAX` stringifies as itself: 8 + 15 = 23 (rdma-core 44 prints
/// "valid range is 23 to 65536" and accepts 23).
pub const MIN_SIZE: usize = 23;
/// The largest `-S` rping accepts (`RPING_BUFSIZE - 1`; its message says 65536, but 65536
/// itself is refused).
pub const MAX_SIZE: usize = 64 * 1024 - 1;
/// rping's default `-S`.
pub const DEFAULT_SIZE: usize = 64;

const FIRST: u8 = b'A';
const LAST: u8 = b'z';

/// Generates successive pings' data.
#[derive(Clone, Debug)]
pub struct PingPattern {
    ping: u64,
    start: u8,
}

impl Default for PingPattern {
    fn default() -> Self {
        Self {
            ping: 0,
            start: FIRST,
        }
    }
}

impl PingPattern {
    /// The pattern of ping 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of the ping [`fill`](Self::fill) writes next.
    pub fn next_ping(&self) -> u64 {
        self.ping
    }

    /// Writes the next ping's data into all of `buf` and returns its number. An empty `buf`
    /// is left alone (the ping still counts).
    pub fn fill(&mut self, buf: &mut [u8]) -> u64 {
        let ping = self.ping;
        let prefix = format!("rdma-ping-{ping}: ");
        let size = buf.len();
        if size > 0 {
            // snprintf: at most size - 1 characters, then a NUL.
            let n = prefix.len().min(size - 1);
            buf[..n].copy_from_slice(&prefix.as_bytes()[..n]);
            buf[n] = 0;
            let mut c = self.start;
            // The letters start where the untruncated prefix ends (snprintf's return value).
            for b in buf.iter_mut().skip(prefix.len()) {
                *b = c;
                c = if c >= LAST { FIRST } else { c + 1 };
            }
            buf[size - 1] = 0;
        }
        self.start = if self.start >= LAST {
            FIRST
        } else {
            self.start + 1
        };
        self.ping += 1;
        ping
    }
}

/// The bytes before the first NUL (all of them if there is none), as C's `%s` prints them.
pub fn c_str(buf: &[u8]) -> &[u8] {
    match buf.iter().position(|&b| b == 0) {
        Some(n) => &buf[..n],
        None => buf,
    }
}

/// The length C's `strlen(buf) + 1` gives when a NUL is present; `buf.len()` otherwise (the
/// bytes an rping server echoes, bounded by what it holds).
pub fn c_str_len_with_nul(buf: &[u8]) -> usize {
    match buf.iter().position(|&b| b == 0) {
        Some(n) => n + 1,
        None => buf.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(buf: &[u8]) -> &str {
        std::str::from_utf8(c_str(buf)).unwrap()
    }

    #[test]
    fn first_pings_match_rdma_core_rping() {
        // `rping -c -v` (rdma-core 44, default size 64) prints these.
        let mut p = PingPattern::new();
        let mut buf = vec![0xff; 64];
        assert_eq!(p.fill(&mut buf), 0);
        assert_eq!(
            text(&buf),
            "rdma-ping-0: ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqr"
        );
        assert_eq!(buf[63], 0);
        assert_eq!(c_str_len_with_nul(&buf), 64);
        assert_eq!(p.fill(&mut buf), 1);
        assert_eq!(
            text(&buf),
            "rdma-ping-1: BCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrs"
        );
    }

    #[test]
    fn letters_wrap_from_z_to_a() {
        let mut p = PingPattern::new();
        let mut buf = vec![0; 100];
        p.fill(&mut buf);
        // 'A'..='z' is 58 letters; the 59th letter is 'A' again.
        let letters = &buf[13..99];
        assert_eq!(letters[57], b'z');
        assert_eq!(letters[58], b'A');
        // The start letter wraps too: ping 58 starts with 'A' again, ping 57 with 'z'.
        for _ in 1..57 {
            p.fill(&mut buf);
        }
        assert_eq!(p.fill(&mut buf), 57);
        assert_eq!(buf[14], b'z');
        p.fill(&mut buf);
        assert_eq!(&buf[..16], b"rdma-ping-58: AB");
    }

    #[test]
    fn minimum_size_truncates_like_snprintf() {
        let mut p = PingPattern::new();
        let mut buf = vec![0xff; MIN_SIZE];
        p.fill(&mut buf);
        assert_eq!(text(&buf), "rdma-ping-0: ABCDEFGHI");
        // A number too long for the buffer: snprintf truncates, no letters follow.
        let mut p = PingPattern {
            ping: 12_345_678_901_234,
            start: FIRST,
        };
        p.fill(&mut buf);
        assert_eq!(text(&buf), "rdma-ping-123456789012");
        assert_eq!(c_str_len_with_nul(&buf), MIN_SIZE);
    }

    #[test]
    fn every_size_ends_in_its_only_nul() {
        let mut p = PingPattern::new();
        for size in [1, 2, 13, 14, 15, MIN_SIZE, 64, 1000, MAX_SIZE] {
            let mut buf = vec![0xff; size];
            p.fill(&mut buf);
            assert_eq!(buf[size - 1], 0);
            if size >= MIN_SIZE {
                assert_eq!(c_str_len_with_nul(&buf), size, "size {size}");
            }
        }
        p.fill(&mut []);
    }

    #[test]
    fn c_str_helpers() {
        assert_eq!(c_str(b"ab\0cd"), b"ab");
        assert_eq!(c_str(b"abc"), b"abc");
        assert_eq!(c_str_len_with_nul(b"ab\0cd"), 3);
        assert_eq!(c_str_len_with_nul(b"abc"), 3);
        assert_eq!(c_str_len_with_nul(b""), 0);
    }
}
