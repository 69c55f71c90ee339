//! Counting server-sent events in a decoded response body, for `--stream`: an event ends at
//! a blank line, and it is a data event when one of its lines is a `data` field. Comment
//! lines (`: keep-alive`) and events without data do not count as tokens.
//!
//! Incremental and allocation-free: bytes are fed as reads deliver them, split anywhere.

/// Scans one body's events. Reset it (or make a new one) for each response.
#[derive(Debug, Clone, Default)]
pub struct SseScanner {
    /// Bytes seen in the current line.
    line_len: usize,
    /// The current line's first bytes, to recognise `data:`.
    prefix: [u8; 5],
    /// The previous byte was a CR (a following LF belongs to the same line ending).
    after_cr: bool,
    /// The current event has a data field.
    has_data: bool,
}

impl SseScanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next body bytes; returns how many data events they completed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> u32 {
        let mut events = 0;
        while let Some((&b, rest)) = bytes.split_first() {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    bytes = rest;
                    continue;
                }
            }
            match b {
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    events += u32::from(self.end_line());
                    bytes = rest;
                }
                _ if self.line_len >= self.prefix.len() => {
                    // Past the field name: skip to the line's end.
                    let skip = memchr::memchr2(b'\r', b'\n', bytes).unwrap_or(bytes.len());
                    self.line_len += skip;
                    bytes = &bytes[skip..];
                }
                _ => {
                    self.prefix[self.line_len] = b;
                    self.line_len += 1;
                    bytes = rest;
                }
            }
        }
        events
    }

    /// Ends the current line; true when it was the blank line ending a data event.
    fn end_line(&mut self) -> bool {
        let len = self.line_len;
        self.line_len = 0;
        if len == 0 {
            return std::mem::take(&mut self.has_data);
        }
        let is_data = (len == 4 && self.prefix[..4] == *b"data") || self.prefix == *b"data:";
        self.has_data |= is_data;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_split_everywhere(body: &[u8]) -> u32 {
        let whole = SseScanner::new().feed(body);
        for cut in 0..=body.len() {
            let mut s = SseScanner::new();
            let n = s.feed(&body[..cut]) + s.feed(&body[cut..]);
            assert_eq!(n, whole, "cut at {cut}");
        }
        let mut s = SseScanner::new();
        let bytewise: u32 = body.iter().map(|b| s.feed(std::slice::from_ref(b))).sum();
        assert_eq!(bytewise, whole);
        whole
    }

    #[test]
    fn counts_data_events_of_the_fixture() {
        let events = crate::sse_events(crate::CHAT_STREAM_SSE).len() as u32;
        assert_eq!(count_split_everywhere(crate::CHAT_STREAM_SSE), events);
    }

    #[test]
    fn line_endings_comments_and_bare_data() {
        assert_eq!(
            count_split_everywhere(b"data: a\r\n\r\ndata: b\r\rdata\n\n"),
            3
        );
        assert_eq!(count_split_everywhere(b": ping\n\nevent: x\n\n"), 0);
        assert_eq!(count_split_everywhere(b"event: x\ndata: 1\ndata: 2\n\n"), 1);
        assert_eq!(count_split_everywhere(b"datum: 1\n\ndata: unfinished\n"), 0);
        assert_eq!(count_split_everywhere(b"\n\n\ndata:x\n\n"), 1);
    }
}
