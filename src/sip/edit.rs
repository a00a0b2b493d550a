//! In-place splicing: the proxy's edits (its Via, Record-Route, Max-Forwards, popped Routes)
//! applied to the received bytes in one pass, everything between them copied verbatim.

use std::ops::Range;

/// A set of non-overlapping edits against one source buffer.
#[derive(Debug)]
pub struct Splice<'a> {
    src: &'a [u8],
    edits: Vec<(Range<usize>, Range<usize>)>,
    scratch: Vec<u8>,
}

impl<'a> Splice<'a> {
    pub fn new(src: &'a [u8]) -> Self {
        Self { src, edits: Vec::with_capacity(8), scratch: Vec::with_capacity(256) }
    }

    /// Replaces `range` of the source with `with`. Edits may be added in any order; two
    /// edits must not overlap (an insertion at a point is an empty range).
    pub fn replace(&mut self, range: Range<usize>, with: &[u8]) {
        let start = self.scratch.len();
        self.scratch.extend_from_slice(with);
        self.edits.push((range, start..self.scratch.len()));
    }

    pub fn insert(&mut self, at: usize, with: &[u8]) {
        self.replace(at..at, with);
    }

    /// Starts an insertion whose bytes are written by the caller with [`Splice::push`], to
    /// avoid building them in a temporary first.
    pub fn insert_with(&mut self, at: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.scratch.len();
        write(&mut self.scratch);
        self.edits.push((at..at, start..self.scratch.len()));
    }

    pub fn remove(&mut self, range: Range<usize>) {
        self.replace(range, b"");
    }

    /// Writes `src[range]` with the edits that fall inside it applied.
    pub fn write_range(&mut self, range: Range<usize>, out: &mut Vec<u8>) {
        self.edits.sort_by_key(|(r, _)| (r.start, r.end));
        let mut pos = range.start;
        for (r, s) in &self.edits {
            if r.start < range.start || r.end > range.end || r.start < pos {
                continue;
            }
            out.extend_from_slice(&self.src[pos..r.start]);
            out.extend_from_slice(&self.scratch[s.clone()]);
            pos = r.end;
        }
        out.extend_from_slice(&self.src[pos..range.end]);
    }

    /// `src[range]` with its edits applied, in a buffer of exactly that size: it becomes
    /// a `Bytes` without a second allocation, and what lingers holds no slack.
    pub fn to_vec(&mut self, range: Range<usize>) -> Vec<u8> {
        let mut len = range.len();
        for (r, s) in &self.edits {
            if r.start >= range.start && r.end <= range.end {
                len = len.saturating_sub(r.len()).saturating_add(s.len());
            }
        }
        let mut out = Vec::with_capacity(len);
        self.write_range(range, &mut out);
        out
    }

    /// The whole edited message.
    pub fn finish(mut self) -> Vec<u8> {
        self.to_vec(0..self.src.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_in_any_order() {
        let src = b"0123456789";
        let mut s = Splice::new(src);
        s.replace(7..8, b"X");
        s.insert(0, b"<");
        s.remove(2..4);
        s.insert_with(10, |v| v.extend_from_slice(b">"));
        assert_eq!(s.to_vec(1..9), b"1456X8");
        let out = s.finish();
        assert_eq!(out, b"<01456X89>");
        assert_eq!(out.capacity(), out.len(), "sized exactly");
    }

    #[test]
    fn write_range_keeps_only_inner_edits() {
        let src = b"aaa|bbb|ccc";
        let mut s = Splice::new(src);
        s.replace(0..1, b"A");
        s.replace(5..6, b"B");
        let mut out = Vec::new();
        s.write_range(4..7, &mut out);
        assert_eq!(out, b"bBb");
    }
}
