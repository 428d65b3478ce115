//! The bundle's gzip stage. Deflate is the one stage that bounds an install (everything else runs
//! at many times its speed), so with more than one thread it runs the way pigz does: the input is
//! cut into blocks, each block is deflated on its own worker with the 32 KiB before it as its
//! dictionary and ended with a sync flush (byte-aligned, not final), and the compressed blocks are
//! written in order. The result is one ordinary gzip member, read unchanged by `gunzip`, `tar`
//! and Eucalyptus' unbundler; it differs from a single-threaded stream only in a few bytes of
//! flush markers per block.

use flate2::{Compress, Compression, FlushCompress, Status};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Input per block: large enough that the dictionary priming (32 KiB) and the flush markers cost
/// little, small enough that two workers stay busy on small files.
const BLOCK: usize = 256 << 10;
/// Deflate's window: the history a block may refer back to.
const DICTIONARY: usize = 32 << 10;

/// How bundles are compressed: the gzip level (0-9) and how many threads deflate, where
/// deflate runs; a gzipped raw image is spliced (`splice/`) unless `recompress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GzipSettings {
    pub level: u32,
    pub threads: usize,
    /// `--recompress`: deflate every bundle, even where the upstream's deflate data could be
    /// spliced in.
    pub recompress: bool,
}

impl GzipSettings {
    /// `gzip`'s and euca2ools' default level.
    pub const DEFAULT_LEVEL: u32 = 6;

    /// Level 6 on every core this process may use.
    pub fn default_for_this_machine() -> Self {
        Self {
            level: Self::DEFAULT_LEVEL,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            recompress: false,
        }
    }
}

/// A gzip writer: flate2's own with one thread, the block-parallel one with more.
pub enum GzipWriter<W: Write> {
    Single(flate2::write::GzEncoder<W>),
    Parallel(ParallelGzip<W>),
}

impl<W: Write> GzipWriter<W> {
    pub fn new(inner: W, settings: GzipSettings) -> Self {
        let level = Compression::new(settings.level.min(9));
        if settings.threads <= 1 {
            GzipWriter::Single(flate2::write::GzEncoder::new(inner, level))
        } else {
            GzipWriter::Parallel(ParallelGzip::new(inner, level, settings.threads))
        }
    }

    /// Writes the rest of the stream and its trailer, and hands back the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            GzipWriter::Single(encoder) => encoder.finish(),
            GzipWriter::Parallel(parallel) => parallel.finish(),
        }
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            GzipWriter::Single(encoder) => encoder.write(buf),
            GzipWriter::Parallel(parallel) => parallel.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            GzipWriter::Single(encoder) => encoder.flush(),
            GzipWriter::Parallel(parallel) => parallel.flush(),
        }
    }
}

/// One block for a worker: `input[..dictionary]` is history, `input[dictionary..]` the data.
struct Job {
    sequence: u64,
    input: Vec<u8>,
    dictionary: usize,
    last: bool,
    output: Vec<u8>,
}

struct Done {
    sequence: u64,
    input: Vec<u8>,
    output: io::Result<Vec<u8>>,
}

pub struct ParallelGzip<W: Write> {
    inner: Option<W>,
    jobs: Option<Sender<Job>>,
    results: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    /// The block being filled: history first, then data.
    current: Vec<u8>,
    current_dictionary: usize,
    next_sequence: u64,
    next_to_write: u64,
    /// Finished blocks that arrived ahead of their turn.
    waiting: BTreeMap<u64, Done>,
    max_in_flight: u64,
    /// Buffers back from the workers, reused so the hot path does not allocate.
    spare_inputs: Vec<Vec<u8>>,
    spare_outputs: Vec<Vec<u8>>,
    crc: crc32fast::Hasher,
    length: u64,
    header_written: bool,
}

impl<W: Write> ParallelGzip<W> {
    fn new(inner: W, level: Compression, threads: usize) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let (done, results) = mpsc::channel();
        let workers = (0..threads)
            .map(|_| {
                let queue = Arc::clone(&queue);
                let done = done.clone();
                std::thread::Builder::new()
                    .name("deflate".into())
                    .spawn(move || deflate_worker(level, &queue, &done))
                    .expect("a deflate thread starts")
            })
            .collect();
        Self {
            inner: Some(inner),
            jobs: Some(jobs),
            results,
            workers,
            current: Vec::with_capacity(DICTIONARY + BLOCK),
            current_dictionary: 0,
            next_sequence: 0,
            next_to_write: 0,
            waiting: BTreeMap::new(),
            max_in_flight: 2 * threads as u64 + 2,
            spare_inputs: Vec::new(),
            spare_outputs: Vec::new(),
            crc: crc32fast::Hasher::new(),
            length: 0,
            header_written: false,
        }
    }

    fn inner_mut(&mut self) -> &mut W {
        self.inner
            .as_mut()
            .expect("the inner writer is there until finish")
    }

    /// Hands the current block to the workers and starts the next one with its last 32 KiB.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        let mut next = self
            .spare_inputs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(DICTIONARY + BLOCK));
        next.clear();
        let history = (self.current.len() - self.current_dictionary).min(DICTIONARY);
        next.extend_from_slice(&self.current[self.current.len() - history..]);
        let input = std::mem::replace(&mut self.current, next);
        let job = Job {
            sequence: self.next_sequence,
            input,
            dictionary: self.current_dictionary,
            last,
            output: self.spare_outputs.pop().unwrap_or_default(),
        };
        self.current_dictionary = history;
        self.next_sequence += 1;
        self.jobs
            .as_ref()
            .expect("jobs are sent until finish")
            .send(job)
            .map_err(|_| io::Error::other("the deflate workers stopped"))?;
        while self.next_sequence - self.next_to_write >= self.max_in_flight {
            self.write_ready(true)?;
        }
        self.write_ready(false)
    }

    /// Writes finished blocks in order; with `wait`, blocks until at least one more is written.
    fn write_ready(&mut self, wait: bool) -> io::Result<()> {
        let mut wrote = false;
        loop {
            while let Some(done) = self.waiting.remove(&self.next_to_write) {
                let output = done.output?;
                self.write_header()?;
                self.inner_mut().write_all(&output)?;
                self.next_to_write += 1;
                self.spare_inputs.push(done.input);
                self.spare_outputs.push(output);
                wrote = true;
            }
            let arrived = if wait && !wrote {
                Some(
                    self.results
                        .recv()
                        .map_err(|_| io::Error::other("the deflate workers stopped"))?,
                )
            } else {
                self.results.try_recv().ok()
            };
            match arrived {
                Some(done) => {
                    self.waiting.insert(done.sequence, done);
                }
                None => return Ok(()),
            }
        }
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // ID1 ID2, deflate, no flags, no mtime, no extra flags, OS unknown: as flate2 writes it.
            let header = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
            self.inner_mut().write_all(&header)?;
            self.header_written = true;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        // The final block may be empty: it still ends the deflate stream.
        self.submit(true)?;
        while self.next_to_write < self.next_sequence {
            self.write_ready(true)?;
        }
        let crc = std::mem::take(&mut self.crc).finalize();
        let length = self.length as u32;
        let mut inner = self.inner.take().expect("finish runs once");
        inner.write_all(&crc.to_le_bytes())?;
        inner.write_all(&length.to_le_bytes())?;
        Ok(inner)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.current_dictionary + BLOCK - self.current.len();
        let n = buf.len().min(room);
        self.current.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.length += n as u64;
        if self.current.len() == self.current_dictionary + BLOCK {
            self.submit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner_mut().flush()
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        // Closing the queue ends the workers; wait for them so no thread outlives the bundle.
        self.jobs.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn deflate_worker(level: Compression, queue: &Mutex<Receiver<Job>>, done: &Sender<Done>) {
    let mut compress = Compress::new(level, false);
    loop {
        let job = match queue.lock() {
            Ok(queue) => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let Job {
            sequence,
            input,
            dictionary,
            last,
            mut output,
        } = job;
        output.clear();
        let result = deflate_block(&mut compress, &input, dictionary, last, &mut output);
        let sent = done.send(Done {
            sequence,
            input,
            output: result.map(|()| output),
        });
        if sent.is_err() {
            return;
        }
    }
}

/// Deflates `input[dictionary..]` as a self-contained run of deflate blocks that may refer back
/// into `input[..dictionary]`, ending byte-aligned (sync flush) or, for the last, final.
fn deflate_block(
    compress: &mut Compress,
    input: &[u8],
    dictionary: usize,
    last: bool,
    output: &mut Vec<u8>,
) -> io::Result<()> {
    compress.reset();
    if dictionary > 0 {
        compress
            .set_dictionary(&input[..dictionary])
            .map_err(io::Error::other)?;
    }
    let data = &input[dictionary..];
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let start = compress.total_in();
    loop {
        if output.capacity() - output.len() < 4096 {
            output.reserve(data.len() / 2 + 4096);
        }
        let consumed = (compress.total_in() - start) as usize;
        let status = compress
            .compress_vec(&data[consumed..], output, flush)
            .map_err(io::Error::other)?;
        let consumed = (compress.total_in() - start) as usize;
        let room_left = output.len() < output.capacity();
        match status {
            Status::StreamEnd => return Ok(()),
            Status::Ok | Status::BufError if !last && consumed == data.len() && room_left => {
                return Ok(());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|i| {
                if (i / 70_000) % 3 == 0 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                } else {
                    b"the quick brown fox jumps over the lazy dog "[i % 44]
                }
            })
            .collect()
    }

    fn compress(data: &[u8], threads: usize, write_size: usize) -> Vec<u8> {
        let mut writer = GzipWriter::new(
            Vec::new(),
            GzipSettings {
                level: 6,
                threads,
                recompress: true,
            },
        );
        for chunk in data.chunks(write_size.max(1)) {
            writer.write_all(chunk).unwrap();
        }
        writer.finish().unwrap()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut decoder = GzDecoder::new(bytes);
        let mut out = Vec::new();
        decoder.read_to_end(&mut out).unwrap();
        // One member, nothing after it.
        assert!(decoder.into_inner().is_empty());
        out
    }

    #[test]
    fn parallel_output_is_one_gzip_member_with_the_same_bytes() {
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12_345] {
            let data = sample(len);
            for threads in [2, 3] {
                for write_size in [1 << 20, 4097] {
                    let gz = compress(&data, threads, write_size);
                    assert_eq!(gunzip(&gz), data, "len {len} threads {threads}");
                }
            }
        }
    }

    #[test]
    fn the_dictionary_keeps_the_ratio_close_to_single_threaded() {
        let data = sample(4 * BLOCK);
        let single = compress(&data, 1, 1 << 20).len() as f64;
        let parallel = compress(&data, 2, 1 << 20).len() as f64;
        assert!(parallel / single < 1.01, "{parallel} vs {single}");
    }
}
