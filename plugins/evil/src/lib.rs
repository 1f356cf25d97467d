//! `evil`: a hostile plugin for testing the sandbox. Never use it in a real pipeline.
//!
//! `mode` chooses the misbehaviour on `process`:
//! - `panic` (traps with a message), `error` (returns a plugin error), `none` (passes input)
//! - `loop` (never returns), `sleep` (sleeps in a host call: a WASI poll, not Wasm code)
//! - `alloc` (allocates without bound), `huge` (builds an enormous output batch)
//! - `recursion` (recurses without bound)
//! - `wrong_schema` (returns a batch that does not match its declared output schema)
//! - `read_file` (reads `path`, default `/etc/passwd`), `env` (reads variable `var`, default
//!   `HOME`), `socket` (connects to `address`, default `127.0.0.1:22`), `http` (GETs `url`,
//!   default `http://127.0.0.1:9/`):
//!   each returns the error it got as a plugin error, or fails with "got it" if the host let it
//! - `flood_stdout` (prints 20 000 lines, then panics), `flood_log` (logs 100 000 lines)
//! - `flaky` (a retryable error on the first attempt at a batch, then passes input)
//! - `clock` (returns input plus the wall clock it reads and two random numbers)
//! - `finish_error` (fails in `finish-batch`)
//!
//! `after` (default 0) lets that many batches pass through first.

use std::sync::Arc;

use sluice_sdk::arrow_array::{Int64Array, RecordBatch, StringArray};
use sluice_sdk::arrow_schema::{DataType, Field, Schema, SchemaRef};
use sluice_sdk::{BatchContext, Config, Error, Level, Transform, log, util};

const MODES: [&str; 18] = [
    "panic",
    "error",
    "none",
    "loop",
    "sleep",
    "alloc",
    "huge",
    "recursion",
    "wrong_schema",
    "read_file",
    "env",
    "socket",
    "http",
    "flood_stdout",
    "flood_log",
    "flaky",
    "clock",
    "finish_error",
];

struct Evil {
    mode: String,
    after: u64,
    seen: u64,
    target: Option<String>,
    hoard: Vec<Vec<u8>>,
    input: Option<SchemaRef>,
}

#[inline(never)]
#[expect(unconditional_recursion, reason = "the point: recursion without bound")]
fn recurse(depth: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(depth % 256) as usize] = depth as u8;
    let mut next = [0u8; 256];
    next[0] = pad[0];
    recurse(depth + 1, &mut next).wrapping_add(u64::from(pad[1]))
}

fn got_it(what: &str) -> Error {
    Error::Failed(format!("got it: the host let the plugin {what}"))
}

impl Evil {
    /// Tries to reach something the sandbox should deny; the error it got is the plugin error.
    fn escape(&self) -> Error {
        let target = self.target.clone();
        match self.mode.as_str() {
            "read_file" => {
                let path = target.unwrap_or_else(|| "/etc/passwd".into());
                match std::fs::read_to_string(&path) {
                    Ok(_) => got_it(&format!("read {path}")),
                    Err(e) => Error::Failed(format!("denied: reading {path}: {e}")),
                }
            }
            "env" => {
                let var = target.unwrap_or_else(|| "HOME".into());
                match std::env::var(&var) {
                    Ok(v) => got_it(&format!("read {var}={v}")),
                    Err(e) => Error::Failed(format!("denied: variable {var}: {e}")),
                }
            }
            "socket" => {
                let addr = target.unwrap_or_else(|| "127.0.0.1:22".into());
                match std::net::TcpStream::connect(&addr) {
                    Ok(_) => got_it(&format!("connect to {addr}")),
                    Err(e) => Error::Failed(format!("denied: connecting to {addr}: {e}")),
                }
            }
            _ => Error::Failed("not an escape mode".into()),
        }
    }
}

impl Transform for Evil {
    fn create(config: Config) -> Result<Self, Error> {
        config.check_keys(&["mode", "after", "path", "var", "address", "url"])?;
        let mode = config.require_str("mode")?.to_string();
        if !MODES.contains(&mode.as_str()) {
            return Err(Error::InvalidConfig(format!("`mode` must be one of {}, got {mode:?}", MODES.join(", "))));
        }
        let after = config.int_or("after", 0)?.max(0) as u64;
        let target =
            ["path", "var", "address", "url"].iter().find_map(|k| config.str(k).ok().flatten()).map(str::to_string);
        Ok(Evil { mode, after, seen: 0, target, hoard: Vec::new(), input: None })
    }

    fn output_schema(&mut self, input: &Schema) -> Result<SchemaRef, Error> {
        self.input = Some(Arc::new(input.clone()));
        if self.mode == "clock" {
            let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new("clock_ms", DataType::Int64, false));
            fields.push(Field::new("random", DataType::Utf8, false));
            return Ok(util::schema(fields));
        }
        Ok(Arc::new(input.clone()))
    }

    fn process(&mut self, ctx: &BatchContext, input: RecordBatch) -> Result<RecordBatch, Error> {
        self.seen += 1;
        if self.seen <= self.after {
            return Ok(input);
        }
        match self.mode.as_str() {
            "panic" => panic!("evil plugin panics on purpose"),
            "error" => Err(Error::Failed("evil plugin refuses this batch".into())),
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    if x == 42 {
                        break;
                    }
                }
                Ok(input)
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(input)
            }
            "alloc" => loop {
                let mut chunk = vec![0u8; 16 << 20];
                chunk[0] = self.hoard.len() as u8;
                self.hoard.push(chunk);
            },
            "huge" => {
                let n = 200_000_000usize;
                let values: Int64Array = (0..n as i64).collect();
                let schema = util::schema(vec![Field::new("n", DataType::Int64, false)]);
                Ok(RecordBatch::try_new(schema, vec![Arc::new(values)])?)
            }
            "recursion" => {
                let mut pad = [0u8; 256];
                let r = recurse(0, &mut pad);
                Err(Error::Failed(format!("recursion ended?! {r}")))
            }
            "wrong_schema" => {
                let schema = util::schema(vec![Field::new("nope", DataType::Int64, false)]);
                Ok(RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1i64]))])?)
            }
            "read_file" | "env" | "socket" => Err(self.escape()),
            "http" => {
                let url = self.target.clone().unwrap_or_else(|| "http://127.0.0.1:9/".into());
                match sluice_sdk::http::send("GET", &url, "text/plain", b"") {
                    Ok(status) => Err(got_it(&format!("reach {url} (status {status})"))),
                    Err(e) => Err(Error::Failed(format!("denied: {url}: {e}"))),
                }
            }
            "flood_stdout" => {
                for i in 0..20_000 {
                    println!("evil noise line {i}");
                }
                panic!("evil plugin panics after flooding stdout");
            }
            "flood_log" => {
                for i in 0..100_000 {
                    log(Level::Info, &format!("evil log line {i} {}", "x".repeat(100)));
                }
                Ok(input)
            }
            "flaky" if ctx.attempt == 0 => Err(Error::Retryable("evil plugin fails the first attempt".into())),
            "clock" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(-1);
                let random = format!(
                    "{:016x}{:016x}",
                    wasip2::random::random::get_random_u64(),
                    wasip2::random::insecure::get_insecure_random_u64()
                );
                let n = input.num_rows();
                let mut columns = input.columns().to_vec();
                columns.push(Arc::new(Int64Array::from(vec![now; n])));
                columns.push(Arc::new(StringArray::from(vec![random.as_str(); n])));
                let schema = self.output_schema(&input.schema())?;
                Ok(RecordBatch::try_new(schema, columns)?)
            }
            _ => Ok(input),
        }
    }

    fn finish_batch(&mut self, _ctx: &BatchContext) -> Result<Option<RecordBatch>, Error> {
        if self.mode == "finish_error" && self.seen > self.after {
            return Err(Error::Failed("evil plugin fails at the end of the batch".into()));
        }
        Ok(None)
    }
}

sluice_sdk::export_transform!(Evil);
