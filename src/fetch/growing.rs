//! A partial file read while its download writes it (issue 16, the overlapped install): the
//! download tells a [`Growth`] how much of the file's start is in place, and a [`GrowingFile`]
//! over the same file blocks until the bytes a read needs are there, so the bundler can start on
//! a file before it is whole. It fails when the download fails, is cancelled, or starts the file
//! again from the beginning (the bytes read may then not be the bytes that verify).
//!
//! Nothing read here is trusted: the install uploads no manifest and registers nothing until the
//! file has verified (`install/job.rs`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

/// How a download is getting on, shared with the readers of its partial file.
#[derive(Clone, Default)]
pub struct Growth(Arc<Shared>);

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    grown: Condvar,
}

#[derive(Default)]
struct State {
    /// Bytes at the file's start written by the download (some may still be in its write
    /// buffer: a read that finds fewer waits for them).
    ready: u64,
    /// The whole file is in place.
    whole: bool,
    /// Why the file will not grow further: a reader fails with it.
    failed: Option<String>,
}

impl Growth {
    pub fn new() -> Self {
        Self::default()
    }

    /// `ready` bytes of the file's start are written. Fewer than told before means the download
    /// started the file again: what was read of it may differ, and readers fail.
    pub fn advance(&self, ready: u64) {
        let mut state = self.0.state.lock().expect("growth lock");
        if ready < state.ready {
            state.failed.get_or_insert_with(|| {
                "the download started the file again from the beginning".into()
            });
        }
        state.ready = ready;
        drop(state);
        self.0.grown.notify_all();
    }

    /// The download is over: every byte of the file is in place.
    pub fn whole(&self) {
        self.0.state.lock().expect("growth lock").whole = true;
        self.0.grown.notify_all();
    }

    /// The download failed or was cancelled (`why`, one line): readers fail with it.
    pub fn failed(&self, why: &str) {
        self.0
            .state
            .lock()
            .expect("growth lock")
            .failed
            .get_or_insert_with(|| why.to_string());
        self.0.grown.notify_all();
    }

    /// A reader of the file of `size` bytes that the download writes at `partial` (or, once it
    /// is verified and promoted, finds at `promoted`).
    pub fn reader(&self, partial: PathBuf, promoted: PathBuf, size: u64) -> GrowingFile {
        GrowingFile {
            growth: self.clone(),
            paths: [partial, promoted],
            file: None,
            size,
            position: 0,
        }
    }

    /// Waits until the byte at `position` is in place, or a short while (a write buffer may
    /// hold it; the download wakes us on each chunk). Returns how many bytes from `position`
    /// are in place, as far as the download says.
    fn wait_for(&self, position: u64, size: u64) -> io::Result<u64> {
        let shared = &*self.0;
        let mut state = shared.state.lock().expect("growth lock");
        loop {
            if let Some(why) = &state.failed {
                return Err(io::Error::other(why.clone()));
            }
            let ready = if state.whole { size } else { state.ready };
            if ready > position {
                return Ok(ready - position);
            }
            state = shared
                .grown
                .wait_timeout(state, crate::limits::GROWING_FILE_POLL)
                .expect("growth lock")
                .0;
        }
    }

    fn is_whole(&self) -> bool {
        self.0.state.lock().expect("growth lock").whole
    }
}

/// The partial file as a `Read + Seek` of its final size: reads block until the download has
/// written what they ask for (positioned: a qcow2 disk is read at offsets).
pub struct GrowingFile {
    growth: Growth,
    paths: [PathBuf; 2],
    file: Option<File>,
    size: u64,
    position: u64,
}

impl GrowingFile {
    fn file(&mut self) -> io::Result<Option<&File>> {
        if self.file.is_none() {
            for path in &self.paths {
                match File::open(path) {
                    Ok(file) => {
                        self.file = Some(file);
                        break;
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(self.file.as_ref())
    }
}

impl Read for GrowingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.position >= self.size {
            return Ok(0);
        }
        loop {
            let ready = self.growth.wait_for(self.position, self.size)?;
            let want = buf.len().min(usize::try_from(ready).unwrap_or(usize::MAX));
            let position = self.position;
            let got = match self.file()? {
                Some(file) => file.read_at(&mut buf[..want], position)?,
                None => 0,
            };
            if got > 0 {
                self.position += got as u64;
                return Ok(got);
            }
            if self.growth.is_whole() && self.file.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the downloaded file is shorter than its signed size",
                ));
            }
            // In the download's write buffer still: wait for its next chunk.
            let growth = &*self.growth.0;
            let state = growth.state.lock().expect("growth lock");
            drop(
                growth
                    .grown
                    .wait_timeout(state, crate::limits::GROWING_FILE_POLL)
                    .expect("growth lock"),
            );
        }
    }
}

impl Seek for GrowingFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::End(delta) => self.size.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position = target.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the file's start")
        })?;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A reader started before the file exists gets every byte, in order, as a writer appends
    /// them in pieces (some held in a buffer past what it announced), and stops at the size.
    #[test]
    fn a_reader_gets_each_byte_as_the_download_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("f.part");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let growth = Growth::new();
        let mut reader = growth.reader(partial.clone(), dir.path().join("f"), data.len() as u64);
        let writing = {
            let data = data.clone();
            let growth = growth.clone();
            std::thread::spawn(move || {
                let mut file = File::create(&partial).unwrap();
                for chunk in data.chunks(70_000) {
                    file.write_all(chunk).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    growth.advance(file.stream_position().unwrap());
                }
                growth.whole();
            })
        };
        let mut read = Vec::new();
        reader.read_to_end(&mut read).unwrap();
        writing.join().unwrap();
        assert!(read == data);
    }

    /// A positioned read past what is written waits for it; a failed download fails the reader,
    /// and so does a download that starts the file again.
    #[test]
    fn a_read_past_the_written_bytes_waits_and_a_failed_download_fails_it() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("f.part");
        std::fs::write(&partial, [7u8; 100]).unwrap();
        let growth = Growth::new();
        growth.advance(100);
        let mut reader = growth.reader(partial.clone(), dir.path().join("f"), 200);
        reader.seek(SeekFrom::End(-4)).unwrap();
        let failing = {
            let growth = growth.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(100));
                growth.failed("cancelled");
            })
        };
        let error = reader.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(error.to_string(), "cancelled");
        failing.join().unwrap();

        let growth = Growth::new();
        growth.advance(100);
        let mut reader = growth.reader(partial, dir.path().join("f"), 200);
        assert_eq!(reader.read(&mut [0u8; 10]).unwrap(), 10);
        growth.advance(0);
        let error = reader.read(&mut [0u8; 10]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the download started the file again from the beginning"
        );
    }
}
