//! The `socket` source: UTF-8 text lines from a TCP server, for testing and demos.
//!
//! Not replayable: lines live only in memory until their batch commits, so a crash loses the
//! lines that were received but not yet committed (Spark says the same of its socket source).
//! A background task reads the socket into a bounded buffer; when the buffer is full it stops
//! reading, which pushes back on the sender through TCP.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::builder::StringBuilder;
use arrow_array::{RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tokio::io::AsyncBufReadExt;
use tokio_util::task::AbortOnDropHandle;

use super::{Offset, Partitioned, ReadLimit, Source};
use crate::error::{Error, ErrorKind, Result};
use crate::options::Options;

const C: &str = "socket source";
/// Lines buffered before the reader stops reading.
const MAX_BUFFERED: usize = 1 << 20;

#[derive(Default)]
struct Buffer {
    /// Offset of `lines[0]`.
    base: u64,
    lines: VecDeque<(String, i64)>,
    closed: bool,
    error: Option<String>,
}

pub(crate) struct SocketSource {
    host: String,
    port: u16,
    include_timestamp: bool,
    /// The user accepts losing uncommitted lines on a crash (required with a checkpoint).
    pub(crate) at_most_once: bool,
    schema: SchemaRef,
    buffer: Arc<Mutex<Buffer>>,
    bound: Option<u64>,
    reader: Option<AbortOnDropHandle<()>>,
    /// Woken by the reader for every line it buffers.
    waker: Arc<tokio::sync::Notify>,
    /// Source times of the last `get_batch`: each line's arrival.
    times: super::SourceTimes,
}

impl SocketSource {
    pub(crate) fn try_new(options: &Options) -> Result<Self> {
        options.check(C, &["host", "port", "includeTimestamp", "atMostOnce"])?;
        let host = options.require(C, "host", Some("e.g. host = \"localhost\""))?.to_string();
        let port = options.require(C, "port", Some("e.g. port = \"9999\""))?;
        let port: u16 = port.trim().parse().map_err(|_| options.invalid(C, "port", "expected a TCP port number"))?;
        let include_timestamp = options.bool_or(C, "includeTimestamp", false)?;
        let at_most_once = options.bool_or(C, "atMostOnce", false)?;
        let mut fields = vec![Field::new("value", DataType::Utf8, false)];
        if include_timestamp {
            fields.push(Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false));
        }
        Ok(SocketSource {
            host,
            port,
            include_timestamp,
            at_most_once,
            schema: Arc::new(Schema::new(fields)),
            buffer: Arc::default(),
            bound: None,
            reader: None,
            waker: Arc::default(),
            times: Vec::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, message: String, kind: ErrorKind) -> Error {
        Error::Source { source_name: self.description(), message, kind }
    }
}

async fn read_lines(stream: tokio::net::TcpStream, buffer: Arc<Mutex<Buffer>>, waker: Arc<tokio::sync::Notify>) {
    let mut lines = tokio::io::BufReader::new(stream).lines();
    loop {
        let full = buffer.lock().map(|b| b.lines.len() >= MAX_BUFFERED).unwrap_or(true);
        if full {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        }
        let next = lines.next_line().await;
        let _wake = Wake(&waker);
        let mut b = buffer.lock().unwrap_or_else(|p| p.into_inner());
        match next {
            Ok(Some(line)) => {
                let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
                b.lines.push_back((line, ts));
            }
            Ok(None) => {
                b.closed = true;
                return;
            }
            Err(e) => {
                b.error = Some(e.to_string());
                b.closed = true;
                return;
            }
        }
    }
}

/// Wakes the query's loop when dropped, after the buffer's lock is released.
struct Wake<'a>(&'a tokio::sync::Notify);

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

#[async_trait::async_trait]
impl Source for SocketSource {
    fn description(&self) -> String {
        format!("TextSocketV2[host: {}, port: {}]", self.host, self.port)
    }
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn replayable(&self) -> bool {
        false
    }
    fn accepts_at_most_once(&self) -> bool {
        self.at_most_once
    }
    async fn start(&mut self) -> Result<()> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| {
            self.err(
                format!(
                    "cannot connect to {}:{}: {e} (is a server listening? try `nc -lk {}`)",
                    self.host, self.port, self.port
                ),
                ErrorKind::External,
            )
        })?;
        tracing::info!(host = %self.host, port = self.port, "socket source connected");
        self.reader =
            Some(AbortOnDropHandle::new(tokio::spawn(read_lines(stream, self.buffer.clone(), self.waker.clone()))));
        Ok(())
    }
    async fn prepare_available_now(&mut self) -> Result<()> {
        // Give the reader a moment to drain what the server has already sent.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let end = {
            let b = self.lock();
            b.base + b.lines.len() as u64
        };
        self.bound = Some(end);
        Ok(())
    }
    async fn latest_offset(&mut self, start: Option<&Offset>, _: ReadLimit) -> Result<Option<Offset>> {
        let from = start.map(|o| o.as_u64(C)).transpose()?.unwrap_or(0);
        let (end, error) = {
            let b = self.lock();
            (b.base + b.lines.len() as u64, b.error.clone())
        };
        if let Some(e) = error {
            return Err(self.err(format!("connection failed: {e}"), ErrorKind::External));
        }
        let end = self.bound.map_or(end, |b| end.min(b));
        Ok((end > from).then(|| Offset::from_u64(end)))
    }
    async fn get_batch(&mut self, start: Option<&Offset>, end: &Offset) -> Result<Partitioned> {
        let from = start.map(|o| o.as_u64(C)).transpose()?.unwrap_or(0);
        let to = end.as_u64(C)?;
        let b = self.lock();
        if from < b.base {
            return Err(self.err(
                format!("lines from offset {from} were already committed and dropped; the socket source cannot replay"),
                ErrorKind::User,
            ));
        }
        let (lo, hi) = ((from - b.base) as usize, (to - b.base) as usize);
        let slice = b.lines.range(lo..hi.min(b.lines.len()));
        let mut values = StringBuilder::new();
        let mut ts = Vec::new();
        let mut times = Vec::new();
        for (line, t) in slice {
            values.append_value(line);
            ts.push(*t);
            super::push_time(&mut times, *t / 1000, 1);
        }
        drop(b);
        self.times = times;
        let mut columns: Vec<arrow_array::ArrayRef> = vec![Arc::new(values.finish())];
        if self.include_timestamp {
            columns.push(Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")));
        }
        Ok(vec![(0, RecordBatch::try_new(self.schema.clone(), columns)?)])
    }
    fn waker(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.waker.clone())
    }
    fn take_source_times(&mut self) -> super::SourceTimes {
        std::mem::take(&mut self.times)
    }
    async fn commit(&mut self, end: &Offset) -> Result<()> {
        let to = end.as_u64(C)?;
        let mut b = self.lock();
        while b.base < to && !b.lines.is_empty() {
            b.lines.pop_front();
            b.base += 1;
        }
        Ok(())
    }
}
