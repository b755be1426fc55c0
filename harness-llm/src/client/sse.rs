//! An incremental server-sent-events parser: feed it bytes as they arrive, split anywhere,
//! and take out complete events. Follows the WHATWG rules that matter for LLM streams:
//! `\n`, `\r\n` and `\r` line ends; `data:` lines joined with `\n`; one space after the colon
//! dropped; comment lines (`:`) and other fields ignored; a blank line ends an event.

/// One event's data, or the OpenAI end marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// The joined `data:` lines of one event.
    Data(String),
    /// `data: [DONE]`.
    Done,
}

/// The most bytes one event may hold before the stream is called malformed (4 MiB).
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// Why a stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// An event grew past [`MAX_EVENT_BYTES`].
    #[error("an event is larger than {MAX_EVENT_BYTES} bytes")]
    TooLarge,
    /// A line is not UTF-8.
    #[error("the stream is not UTF-8 text")]
    NotUtf8,
}

/// The parser's state between reads.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    after_cr: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; complete events are appended to `out`.
    ///
    /// # Errors
    /// [`SseError`] when an event is too large or not UTF-8; the parser should be dropped.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.feed_with(bytes, |data| {
            out.push(if data == "[DONE]" {
                SseEvent::Done
            } else {
                SseEvent::Data(data.to_owned())
            });
        })
    }

    /// Feeds bytes and calls `on_event` with each complete event's data, borrowed: no
    /// allocation per event. `[DONE]` arrives as the text `[DONE]`.
    ///
    /// # Errors
    /// [`SseError`] when an event is too large or not UTF-8; the parser should be dropped.
    pub fn feed_with(
        &mut self,
        mut bytes: &[u8],
        mut on_event: impl FnMut(&str),
    ) -> Result<(), SseError> {
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        while let Some(i) = memchr::memchr2(b'\n', b'\r', bytes) {
            let ended_by_cr = bytes[i] == b'\r';
            if self.line.is_empty() {
                // The whole line is in this read: parse it in place.
                Self::take_line(
                    &mut self.data,
                    &mut self.has_data,
                    &bytes[..i],
                    &mut on_event,
                )?;
            } else {
                self.line.extend_from_slice(&bytes[..i]);
                let line = std::mem::take(&mut self.line);
                let taken =
                    Self::take_line(&mut self.data, &mut self.has_data, &line, &mut on_event);
                self.line = line;
                self.line.clear();
                taken?;
            }
            bytes = &bytes[i + 1..];
            if ended_by_cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    None => self.after_cr = true,
                    _ => {}
                }
            }
        }
        self.line.extend_from_slice(bytes);
        if self.line.len() + self.data.len() > MAX_EVENT_BYTES {
            return Err(SseError::TooLarge);
        }
        Ok(())
    }

    /// Handles one complete line (without its line end).
    fn take_line(
        data: &mut String,
        has_data: &mut bool,
        line: &[u8],
        on_event: &mut impl FnMut(&str),
    ) -> Result<(), SseError> {
        if line.is_empty() {
            if *has_data {
                on_event(data);
                data.clear();
                *has_data = false;
            }
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::NotUtf8)?;
        let (field, value) = match line.find(':') {
            Some(0) => return Ok(()), // a comment
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (line, ""),
        };
        if field == "data" {
            if *has_data {
                data.push('\n');
            }
            data.push_str(value);
            *has_data = true;
            if data.len() > MAX_EVENT_BYTES {
                return Err(SseError::TooLarge);
            }
        }
        Ok(())
    }

    /// Whether bytes of an unfinished event are buffered (a stream that ends here was cut).
    pub fn has_partial_event(&self) -> bool {
        self.has_data || !self.line.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).expect("valid");
        }
        out
    }

    #[test]
    fn parses_openai_style_streams() {
        let s = b"data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
        assert_eq!(
            parse_all(&[s]),
            [
                SseEvent::Data("{\"a\":1}".into()),
                SseEvent::Data("{\"b\":2}".into()),
                SseEvent::Done
            ]
        );
    }

    #[test]
    fn joins_multi_line_data_and_ignores_other_fields() {
        let s = b"event: message\nid: 7\ndata: one\ndata:two\nretry: 10\n\n";
        assert_eq!(parse_all(&[s]), [SseEvent::Data("one\ntwo".into())]);
    }

    #[test]
    fn handles_crlf_and_cr_line_ends_even_split_between_reads() {
        assert_eq!(
            parse_all(&[b"data: x\r\n\r\n"]),
            [SseEvent::Data("x".into())]
        );
        assert_eq!(
            parse_all(&[b"data: x\r", b"\n\r", b"\n"]),
            [SseEvent::Data("x".into())]
        );
        assert_eq!(parse_all(&[b"data: x\r\r"]), [SseEvent::Data("x".into())]);
    }

    #[test]
    fn an_unterminated_event_is_reported_as_partial() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(b"data: {\"a\":", &mut out).expect("ok");
        assert!(out.is_empty() && p.has_partial_event());
    }

    #[test]
    fn oversized_events_and_non_utf8_are_errors() {
        let mut p = SseParser::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 10];
        let mut out = Vec::new();
        assert_eq!(p.feed(&big, &mut out), Err(SseError::TooLarge));
        let mut p = SseParser::new();
        assert_eq!(
            p.feed(b"data: \xff\xfe\n", &mut out),
            Err(SseError::NotUtf8)
        );
    }

    proptest! {
        #[test]
        fn any_split_of_the_stream_gives_the_same_events(
            events in proptest::collection::vec("[a-zA-Z0-9 {}\":,]{0,40}", 1..8),
            crlf in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut stream = String::new();
            for e in &events {
                stream.push_str(&format!(": comment{nl}data: {e}{nl}{nl}"));
            }
            stream.push_str(&format!("data: [DONE]{nl}{nl}"));
            let bytes = stream.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&bytes[last..p]);
                last = p;
            }
            chunks.push(&bytes[last..]);
            let whole = parse_all(&[bytes]);
            prop_assert_eq!(parse_all(&chunks), whole.clone());
            let mut expected: Vec<SseEvent> = events
                .iter()
                .map(|e| SseEvent::Data(e.clone()))
                .map(|ev| match ev { SseEvent::Data(d) if d == "[DONE]" => SseEvent::Done, other => other })
                .collect();
            expected.push(SseEvent::Done);
            prop_assert_eq!(whole, expected);
        }
    }
}
