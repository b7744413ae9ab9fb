//! Reading event streams as they are written down: JSON lines (one wire [`RunEvent`] per
//! line, as `flexrun run --format jsonl` prints) or SSE frames (`event:` / `id:` / `data:`
//! blocks, as `GET /v1/runs/{id}/events` and `flexrun run --format sse` produce).
//!
//! Lines end with LF or CRLF. SSE comments (`: heartbeat`) and frames without `data:` are
//! skipped; a frame's `data:` lines are joined with LF, as the SSE standard says.

use crate::fsm::RunEvent;

/// How a stream is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// One JSON event per line.
    Jsonl,
    /// `text/event-stream` frames.
    Sse,
}

impl Format {
    /// `jsonl` or `sse`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Sse => "sse",
        }
    }
}

/// Why a stream cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Nothing but blank lines.
    #[error("the input is empty")]
    Empty,
    /// The first line is neither JSON nor an SSE field.
    #[error(
        "line {line}: neither a JSON event (JSON lines) nor an SSE field (`event:`, `id:`, `data:`, `:`)"
    )]
    UnknownFormat {
        /// The line, from 1.
        line: usize,
    },
    /// A line is not UTF-8.
    #[error("line {line}: not UTF-8")]
    NotUtf8 {
        /// The line, from 1.
        line: usize,
    },
    /// A line (JSONL) or a frame's data (SSE) is not a run event.
    #[error("line {line}: not a run event: {source}")]
    Event {
        /// The line (for SSE, the frame's first line), from 1.
        line: usize,
        /// What the JSON reader said.
        #[source]
        source: serde_json::Error,
    },
}

/// The format of `text`, judged by its first non-blank line: `{` starts JSON lines, an SSE
/// field or comment starts SSE.
///
/// # Errors
/// [`WireError::Empty`] or [`WireError::UnknownFormat`].
pub fn detect(text: &str) -> Result<Format, WireError> {
    let Some((line, first)) = text.lines().enumerate().find(|(_, l)| !l.trim().is_empty()) else {
        return Err(WireError::Empty);
    };
    let first = first.trim_start_matches('\u{feff}').trim_start();
    if first.starts_with('{') {
        return Ok(Format::Jsonl);
    }
    let field = first.split(':').next().unwrap_or_default();
    if first.starts_with(':') || (first.contains(':') && SSE_FIELDS.contains(&field)) {
        return Ok(Format::Sse);
    }
    Err(WireError::UnknownFormat { line: line + 1 })
}

const SSE_FIELDS: &[&str] = &["event", "id", "data", "retry"];

/// A decoded stream: its events in order, the line each starts on, and what is wrong with
/// the SSE frames that carried them (checked as rule `sse-frame`).
#[derive(Debug, Clone)]
pub struct Stream {
    format: Format,
    events: Vec<RunEvent>,
    lines: Vec<usize>,
    frame_problems: Vec<(usize, String)>,
}

impl Stream {
    /// An empty stream of `format`, to push lines or frames into.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            events: Vec::new(),
            lines: Vec::new(),
            frame_problems: Vec::new(),
        }
    }

    /// Reads a whole stream, detecting its format.
    ///
    /// # Errors
    /// A [`WireError`] naming the first line that cannot be read.
    pub fn parse(text: &str) -> Result<Self, WireError> {
        let format = detect(text)?;
        let mut stream = Self::new(format);
        match format {
            Format::Jsonl => {
                for (n, line) in text.lines().enumerate() {
                    stream.push_json_line(n + 1, line)?;
                }
            }
            Format::Sse => {
                let mut parser = SseParser::new();
                for frame in parser.push(text.as_bytes())? {
                    stream.push_frame(&frame)?;
                }
                if let Some(frame) = parser.finish()? {
                    stream.push_frame(&frame)?;
                }
            }
        }
        Ok(stream)
    }

    /// The stream's format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The events, in stream order.
    pub fn events(&self) -> &[RunEvent] {
        &self.events
    }

    /// The line the event at `index` starts on, from 1.
    pub fn line_of(&self, index: usize) -> Option<usize> {
        self.lines.get(index).copied()
    }

    /// What is wrong with the SSE frame of the event at `index`, if anything.
    pub fn frame_problem(&self, index: usize) -> Option<&str> {
        self.frame_problems
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, p)| p.as_str())
    }

    /// Adds one JSON line (`line` is its number, from 1); blank lines are skipped.
    ///
    /// # Errors
    /// [`WireError::Event`] when the line is not a run event.
    pub fn push_json_line(&mut self, line: usize, text: &str) -> Result<(), WireError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let event =
            serde_json::from_str(text).map_err(|source| WireError::Event { line, source })?;
        self.events.push(event);
        self.lines.push(line);
        Ok(())
    }

    /// Adds one SSE frame; returns its event, or `None` for a frame without data.
    ///
    /// # Errors
    /// [`WireError::Event`] when the frame's data is not a run event.
    pub fn push_frame(&mut self, frame: &SseFrame) -> Result<Option<&RunEvent>, WireError> {
        let Some(data) = &frame.data else {
            return Ok(None);
        };
        let event: RunEvent = serde_json::from_str(data).map_err(|source| WireError::Event {
            line: frame.line,
            source,
        })?;
        let mut problems = Vec::new();
        let kind = event.kind().as_str();
        match frame.event.as_deref() {
            None => problems.push(format!(
                "the frame has no `event:` line (its data is a `{kind}`)"
            )),
            Some(name) if name != kind => {
                problems.push(format!("`event: {name}` but the data is a `{kind}`"));
            }
            Some(_) => {}
        }
        let seq = event.seq.to_string();
        match frame.id.as_deref() {
            None => problems.push(format!("the frame has no `id:` line (its seq is {seq})")),
            Some(id) if id != seq => {
                problems.push(format!("`id: {id}` but the event's seq is {seq}"))
            }
            Some(_) => {}
        }
        if !problems.is_empty() {
            self.frame_problems
                .push((self.events.len(), problems.join("; ")));
        }
        self.events.push(event);
        self.lines.push(frame.line);
        Ok(self.events.last())
    }
}

/// One SSE frame as received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseFrame {
    /// The `event:` field.
    pub event: Option<String>,
    /// The `id:` field.
    pub id: Option<String>,
    /// The `data:` lines joined with LF; `None` when the frame has none.
    pub data: Option<String>,
    /// The line the frame starts on, from 1.
    pub line: usize,
}

/// Splits `text/event-stream` bytes into frames, chunk by chunk (a chunk may end anywhere,
/// even inside a UTF-8 character).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    lines: usize,
    frame: Option<SseFrame>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the frames they complete.
    ///
    /// # Errors
    /// [`WireError::NotUtf8`] for a line that is not UTF-8.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseFrame>, WireError> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut start = 0;
        while let Some(end) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let raw = &self.buf[start..start + end];
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            self.lines += 1;
            let line = std::str::from_utf8(raw)
                .map_err(|_| WireError::NotUtf8 { line: self.lines })?
                .to_owned();
            start += end + 1;
            if let Some(frame) = self.line(&line) {
                frames.push(frame);
            }
        }
        self.buf.drain(..start);
        Ok(frames)
    }

    /// The frame the input ended in without the blank line that closes it, if any (a file
    /// whose last frame lacks the final blank line). A live stream cut off mid-frame should
    /// drop it instead, as the SSE standard says.
    ///
    /// # Errors
    /// [`WireError::NotUtf8`] when the unfinished last line is not UTF-8.
    pub fn finish(&mut self) -> Result<Option<SseFrame>, WireError> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.lines += 1;
            let line =
                String::from_utf8(rest).map_err(|_| WireError::NotUtf8 { line: self.lines })?;
            let line = line.strip_suffix('\r').unwrap_or(&line).to_owned();
            if let Some(frame) = self.line(&line) {
                return Ok(Some(frame));
            }
        }
        Ok(self.frame.take())
    }

    /// Takes one line; a blank line closes the current frame.
    fn line(&mut self, line: &str) -> Option<SseFrame> {
        if line.is_empty() {
            return self.frame.take();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        let at = self.lines;
        let frame = self.frame.get_or_insert_with(|| SseFrame {
            line: at,
            ..SseFrame::default()
        });
        match field {
            "event" => frame.event = Some(value.to_owned()),
            "id" => frame.id = Some(value.to_owned()),
            "data" => match &mut frame.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => frame.data = Some(value.to_owned()),
            },
            _ => {}
        }
        None
    }
}
