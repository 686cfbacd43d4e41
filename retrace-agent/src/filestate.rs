//! Files as state: a file's content rebuilt from every stream that had it open, each read and
//! write placed at the file offset it used (recorded with each data call), in order. Two views:
//! the content the program left (`retrace cat --file`), and the content the program found
//! when it started (what replay serves), or that it created the file.

use std::collections::HashMap;

use bytes::Bytes;

use crate::model::proto::{self, record::Kind as R, Direction, StreamKind};

const O_CREAT: u64 = 0o100;
const O_EXCL: u64 = 0o200;
const O_TRUNC: u64 = 0o1000;

#[derive(Debug, Clone)]
enum Event {
    /// An open of the path, with its flags when known.
    Open(Option<u64>),
    Read {
        at: u64,
        bytes: Bytes,
    },
    /// A write; `at` is None where the offset is unknown (O_APPEND).
    Write {
        at: Option<u64>,
        bytes: Bytes,
    },
    /// A read that returned nothing at this offset, or a stat: the file ended there.
    End(u64),
}

/// Sorted, disjoint byte ranges `[from, to)`.
#[derive(Debug, Default, Clone)]
struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    fn add(&mut self, from: u64, to: u64) {
        if from >= to {
            return;
        }
        let (mut from, mut to) = (from, to);
        self.0.retain(|&(a, b)| {
            let overlaps = a <= to && from <= b;
            if overlaps {
                from = from.min(a);
                to = to.max(b);
            }
            !overlaps
        });
        let at = self.0.partition_point(|&(a, _)| a < from);
        self.0.insert(at, (from, to));
    }

    /// The parts of `[from, to)` not in the set.
    fn missing(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = from;
        for &(a, b) in &self.0 {
            if b <= at || a >= to {
                continue;
            }
            if a > at {
                out.push((at, a));
            }
            at = at.max(b);
        }
        if at < to {
            out.push((at, to));
        }
        out
    }

    fn cut(&mut self, len: u64) {
        self.0.retain(|&(a, _)| a < len);
        if let Some(last) = self.0.last_mut() {
            last.1 = last.1.min(len);
        }
    }
}

/// Bytes at offsets, with what is known of them.
#[derive(Debug, Default, Clone)]
struct Image {
    content: Vec<u8>,
    known: Ranges,
}

impl Image {
    fn put(&mut self, at: u64, bytes: &[u8]) {
        let (from, to) = (at as usize, at as usize + bytes.len());
        if self.content.len() < to {
            self.content.resize(to, 0);
        }
        self.content[from..to].copy_from_slice(bytes);
        self.known.add(at, to as u64);
    }

    /// The known bytes, piece by piece.
    fn pieces(&self) -> Vec<(u64, Vec<u8>)> {
        self.known.0.iter().map(|&(a, b)| (a, self.content[a as usize..b as usize].to_vec())).collect()
    }

    fn set_len(&mut self, len: u64) {
        self.content.resize(len as usize, 0);
        self.known.cut(len);
    }
}

/// What the program left in a file.
#[derive(Debug, Default)]
pub struct FinalContent {
    /// The content, holes as zero bytes.
    pub content: Vec<u8>,
    /// Ranges of `content` the recording never saw (neither read nor written).
    pub holes: Vec<(u64, u64)>,
    /// Bytes written at an offset the recording does not know (an O_APPEND write to a file not
    /// known from its start): not in `content`.
    pub unplaced: u64,
}

/// The file as the program found it at the start of the recording.
#[derive(Debug, PartialEq)]
pub enum Initial {
    /// The program created it: it did not exist (or its content never mattered).
    Created,
    /// Its whole content was seen (read before the program wrote over it).
    Content(Vec<u8>),
    /// Not all of it was seen: the pieces that were (offset, bytes), read before any write.
    Unknown(Vec<(u64, Vec<u8>)>),
}

/// Everything the recording did to one path.
#[derive(Debug, Default)]
pub struct FileHistory {
    events: Vec<(u64, usize, Event)>,
    /// Some data on it was redacted at record time.
    pub redacted: bool,
    /// The file ranges `[from, to)` redacted in what the program read.
    pub redacted_reads: Vec<(u64, u64)>,
    /// Whether any data call on it had its file offset recorded (recordings made before file
    /// offsets were recorded have none).
    pub placed: bool,
    /// The modification time the program's first stat saw (ns since the epoch), before it
    /// wrote to the file.
    pub mtime_ns: Option<i64>,
    wrote: bool,
}

impl FileHistory {
    fn sorted(&self) -> impl Iterator<Item = &Event> {
        self.sorted_before(u64::MAX)
    }

    /// The events before `until` (ns), in order.
    fn sorted_before(&self, until: u64) -> impl Iterator<Item = &Event> {
        let mut events: Vec<&(u64, usize, Event)> = self.events.iter().filter(|e| e.0 < until).collect();
        // Redaction may hold one direction back on disk: time says what came first.
        events.sort_by_key(|e| (e.0, e.1));
        events.into_iter().map(|e| &e.2)
    }

    /// The content the recording's last write (or read) left.
    pub fn final_content(&self) -> FinalContent {
        let mut image = Image::default();
        let mut unplaced = 0;
        for event in self.sorted() {
            match event {
                Event::Open(Some(flags)) if flags & O_TRUNC != 0 => image = Image::default(),
                Event::Open(_) => {}
                Event::Read { at, bytes } | Event::Write { at: Some(at), bytes } => image.put(*at, bytes),
                Event::Write { at: None, bytes } => {
                    // An append goes to the end: known only if the whole file is.
                    let end = image.content.len() as u64;
                    if image.known.missing(0, end).is_empty() {
                        image.put(end, bytes);
                    } else {
                        unplaced += bytes.len() as u64;
                    }
                }
                Event::End(at) => image.set_len(*at),
            }
        }
        let holes = image.known.missing(0, image.content.len() as u64);
        FinalContent { content: image.content, holes, unplaced }
    }

    /// The file as the program found it: the bytes it read before writing over them, if they
    /// cover the file up to the end it saw.
    pub fn initial(&self) -> Initial {
        self.initial_before(u64::MAX).unwrap_or(Initial::Unknown(Vec::new()))
    }

    /// The file as the program found it, from what it did before `until` (ns; a rename or
    /// link put another file at the path then): None if it did nothing to it before.
    pub fn initial_before(&self, until: u64) -> Option<Initial> {
        self.sorted_before(until).next()?;
        Some(self.initial_of(self.sorted_before(until)))
    }

    fn initial_of<'a>(&self, events: impl Iterator<Item = &'a Event>) -> Initial {
        let mut events = events.peekable();
        let first_flags = match events.peek() {
            Some(Event::Open(flags)) => *flags,
            _ => None, // open before the recording began
        };
        let creates = first_flags.is_some_and(|f| f & O_CREAT != 0);
        if creates && first_flags.is_some_and(|f| f & (O_EXCL | O_TRUNC) != 0) {
            return Initial::Created;
        }
        if first_flags.is_some_and(|f| f & O_TRUNC != 0) {
            return Initial::Content(Vec::new()); // its content never mattered
        }
        let mut initial = Image::default();
        let mut written = Ranges::default();
        let mut size = None;
        let mut first_data_is_write_at_0 = None;
        // Until the program truncates the file or appends to it (where, it does not know).
        for event in events {
            match event {
                Event::Open(flags) if flags.is_some_and(|f| f & O_TRUNC != 0) => break,
                Event::Open(_) => {}
                Event::Read { at, bytes } => {
                    first_data_is_write_at_0.get_or_insert(false);
                    for (from, to) in written.missing(*at, at + bytes.len() as u64) {
                        initial.put(from, &bytes[(from - at) as usize..(to - at) as usize]);
                    }
                }
                Event::Write { at: Some(at), bytes } => {
                    first_data_is_write_at_0.get_or_insert(*at == 0);
                    written.add(*at, at + bytes.len() as u64);
                }
                Event::Write { at: None, .. } => {
                    first_data_is_write_at_0.get_or_insert(false);
                    break;
                }
                // The end the program saw is where the file started to end unless its own
                // writes reached it.
                Event::End(at) => {
                    let written_to = written.0.last().map_or(0, |r| r.1);
                    if size.is_none() && written_to < *at {
                        size = Some(*at);
                    }
                }
            }
        }
        let nothing_read = initial.known.0.is_empty();
        if creates && nothing_read && (size == Some(0) || first_data_is_write_at_0 == Some(true)) {
            return Initial::Created;
        }
        let Some(size) = size else { return Initial::Unknown(initial.pieces()) };
        if size == 0 && nothing_read && !creates {
            return Initial::Content(Vec::new());
        }
        // Bytes the program wrote before it read them can have been anything: left as zeros.
        let mut seen = initial.known.clone();
        for &(a, b) in &written.0 {
            seen.add(a, b);
        }
        if !seen.missing(0, size).is_empty() || size == 0 {
            return Initial::Unknown(initial.pieces());
        }
        initial.set_len(size);
        Initial::Content(initial.content)
    }
}

/// The history of the path stream `stream` had open, read from the recording.
pub fn history_of_stream(
    recording: &crate::store::Recording,
    stream: u64,
) -> Result<Option<(String, FileHistory)>, crate::store::StoreError> {
    let mut histories = FileHistories::default();
    recording.for_each(|record| histories.observe(&record))?;
    let Some(path) = histories.path_of(stream).map(str::to_owned) else { return Ok(None) };
    let history = histories.by_path.remove(&path).unwrap_or_default();
    Ok(Some((path, history)))
}

/// Collects the history of every file path from a recording's records, in one pass.
#[derive(Debug, Default)]
pub struct FileHistories {
    paths: HashMap<u64, String>,
    by_path: HashMap<String, FileHistory>,
    order: usize,
}

impl FileHistories {
    pub fn observe(&mut self, record: &proto::Record) {
        self.order += 1;
        let order = self.order;
        let (stream, ts, event) = match &record.kind {
            Some(R::Stream(info)) => {
                if info.kind() == StreamKind::File && !info.path.is_empty() {
                    self.paths.insert(info.id, info.path.clone());
                }
                return;
            }
            Some(R::Syscall(call)) => {
                let flags = match &*crate::model::proto_text::text(&call.name) {
                    "open" => call.args.get(1).copied(),
                    "openat" => call.args.get(2).copied(),
                    "creat" => Some(O_CREAT | O_TRUNC),
                    "openat2" => None,
                    // A read at the end, or a stat: where the file ended then.
                    _ => {
                        if let (Some(at), 0) = (call.file_offset.or(call.file_size), call.ret) {
                            self.push(call.stream_id, call.ts_ns, order, Event::End(at));
                        }
                        if let Some(mtime) = call.file_mtime_ns {
                            let history = self.paths.get(&call.stream_id).and_then(|p| self.by_path.get_mut(p));
                            if let Some(h) = history.filter(|h| !h.wrote && h.mtime_ns.is_none()) {
                                h.mtime_ns = Some(mtime);
                            }
                        }
                        return;
                    }
                };
                if call.ret < 0 {
                    return;
                }
                (call.stream_id, call.ts_ns, Event::Open(flags))
            }
            Some(R::Data(d)) => {
                let event = match (d.direction(), d.file_offset) {
                    (Direction::In, Some(at)) => Event::Read { at, bytes: d.payload.clone() },
                    (Direction::Out, at) => Event::Write { at, bytes: d.payload.clone() },
                    _ => return,
                };
                if let Some(history) = self.paths.get(&d.stream_id).and_then(|p| self.by_path.get_mut(p)) {
                    history.redacted |= !d.redactions.is_empty();
                    if let (Direction::In, Some(at)) = (d.direction(), d.file_offset) {
                        let spans = d
                            .redactions
                            .iter()
                            .map(|r| (at + u64::from(r.offset), at + u64::from(r.offset + r.length)));
                        history.redacted_reads.extend(spans);
                    }
                    history.placed |= d.file_offset.is_some();
                }
                (d.stream_id, d.ts_ns, event)
            }
            _ => return,
        };
        self.push(stream, ts, order, event);
    }

    fn push(&mut self, stream: u64, ts: u64, order: usize, event: Event) {
        let Some(path) = self.paths.get(&stream) else { return };
        let history = self.by_path.entry(path.clone()).or_default();
        match event {
            Event::End(_) => history.placed = true,
            Event::Write { .. } => history.wrote = true,
            _ => {}
        }
        history.events.push((ts, order, event));
    }

    /// The path a file stream had open.
    pub fn path_of(&self, stream: u64) -> Option<&str> {
        self.paths.get(&stream).map(String::as_str)
    }

    pub fn get(&self, path: &str) -> Option<&FileHistory> {
        self.by_path.get(path)
    }

    pub fn into_histories(self) -> impl Iterator<Item = (String, FileHistory)> {
        self.by_path.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(events: Vec<Event>) -> FileHistory {
        FileHistory {
            events: events.into_iter().enumerate().map(|(i, e)| (i as u64, i, e)).collect(),
            ..Default::default()
        }
    }
    fn read(at: u64, s: &str) -> Event {
        Event::Read { at, bytes: Bytes::copy_from_slice(s.as_bytes()) }
    }
    fn write(at: Option<u64>, s: &str) -> Event {
        Event::Write { at, bytes: Bytes::copy_from_slice(s.as_bytes()) }
    }

    #[test]
    fn writes_land_at_their_offsets_and_unseen_bytes_are_holes() {
        // sqlite-like: the same page written three times, another page once.
        let h = history(vec![
            Event::Open(Some(O_CREAT)),
            Event::End(0),
            write(Some(0), "aaaa"),
            write(Some(8), "bbbb"),
            write(Some(0), "AAAA"),
            write(Some(0), "AAXA"),
        ]);
        let f = h.final_content();
        assert_eq!(f.content, b"AAXA\0\0\0\0bbbb");
        assert_eq!(f.holes, vec![(4, 8)]);
        assert_eq!(h.initial(), Initial::Created);
    }

    #[test]
    fn what_follows_a_rename_onto_the_path_is_another_file() {
        // Read in part (mapped: only its size seen), then replaced (at time 3) and read whole.
        let h =
            history(vec![Event::Open(Some(0)), Event::End(100), Event::Open(Some(0)), read(0, "new"), Event::End(3)]);
        assert_eq!(h.initial_before(2), Some(Initial::Unknown(Vec::new())));
        // Taken as one file, the new file's bytes would be the old one's.
        assert_eq!(h.initial(), Initial::Unknown(vec![(0, b"new".to_vec())]));
        // Not touched before the rename: nothing to say of a file there before.
        assert_eq!(h.initial_before(0), None);
    }

    #[test]
    fn the_initial_content_is_what_was_read_before_being_written() {
        let h = history(vec![
            Event::Open(Some(2)),
            read(0, "hello "),
            write(Some(0), "HELLO"),
            read(6, "world"),
            Event::End(11),
            read(0, "HELLO"),
        ]);
        assert_eq!(h.initial(), Initial::Content(b"hello world".to_vec()));
        assert_eq!(h.final_content().content, b"HELLO world");
        // Read whole, then rewritten (O_TRUNC): found as read, left as written.
        let h = history(vec![
            Event::Open(Some(0)),
            read(0, "v=1\n"),
            Event::End(4),
            Event::Open(Some(O_TRUNC | 1)),
            write(Some(0), "v=2\n"),
        ]);
        assert_eq!(h.initial(), Initial::Content(b"v=1\n".to_vec()));
        assert_eq!(h.final_content().content, b"v=2\n");
        // Not read to its end: unknown.
        let h = history(vec![Event::Open(Some(0)), read(0, "\x7fELF")]);
        assert!(matches!(h.initial(), Initial::Unknown(_)));
        // pread at offsets with a hole between: unknown.
        let h = history(vec![Event::Open(Some(0)), read(0, "ab"), read(4, "ef"), Event::End(6)]);
        assert_eq!(h.initial(), Initial::Unknown(vec![(0, b"ab".to_vec()), (4, b"ef".to_vec())]));
        // An append to a file known from its start goes to its end.
        let h = history(vec![Event::Open(Some(O_CREAT | O_TRUNC)), write(None, "one\n"), write(None, "two\n")]);
        assert_eq!(h.final_content().content, b"one\ntwo\n");
        assert_eq!(h.initial(), Initial::Created);
    }

    #[test]
    fn ranges_merge_and_report_what_is_missing() {
        let mut r = Ranges::default();
        r.add(5, 10);
        r.add(0, 3);
        r.add(2, 6);
        assert_eq!(r.0, vec![(0, 10)]);
        r.add(20, 30);
        assert_eq!(r.missing(0, 40), vec![(10, 20), (30, 40)]);
        r.cut(25);
        assert_eq!(r.0, vec![(0, 10), (20, 25)]);
    }
}
