//! The `sluice` command: run or validate a pipeline file, or run the benchmark.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[path = "cli/status.rs"]
mod status;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Spark Structured Streaming with sandboxed WebAssembly plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline file until it ends (bounded triggers) or Ctrl-C.
    Run {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// Print each batch's progress JSON to stderr.
        #[arg(long)]
        progress: bool,
        /// Hot-reload plugins when their files, or their settings in the pipeline file, change.
        #[arg(long)]
        watch: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Append the query's listener events (started, progress, idle, terminated) as JSON lines.
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// POST the query's listener events as JSON to this URL.
        #[arg(long, value_name = "URL")]
        webhook: Option<String>,
    },
    /// Run a server for many queries: HTTP API, Prometheus metrics, dashboard.
    Serve {
        /// Address to listen on; anything but loopback needs a token.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where submitted queries, uploaded plugins and default checkpoints live.
        #[arg(long, default_value = ".sluice")]
        state_dir: PathBuf,
        /// A token every request must carry (`Authorization: Bearer T`); also from SLUICE_TOKEN.
        #[arg(long)]
        token: Option<String>,
        /// POST every query event as JSON to this URL.
        #[arg(long, value_name = "URL")]
        webhook: Option<String>,
        /// How long a query finds no data before it posts an idle event (Spark's
        /// noDataProgressEventInterval).
        #[arg(long, default_value = "10s")]
        idle_event_interval: String,
    },
    /// Submit a pipeline file to a server, uploading the plugins it names by relative paths.
    Submit {
        /// The pipeline file (TOML).
        file: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show the queries of a server, or one of them (by name or id).
    Status {
        /// A query's name or id (prefix); default: all.
        query: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop a query on a server (by name or id).
    Stop {
        /// The query's name or id (prefix).
        query: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print a query's recent events on a server (by name or id).
    Logs {
        /// The query's name or id (prefix).
        query: String,
        /// How many events.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: usize,
        /// Keep printing new events.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Check a pipeline file without running it: options, plugins, SQL and output mode.
    Validate {
        /// The pipeline file (TOML).
        file: PathBuf,
    },
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Look into a checkpoint.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Run the word-count benchmark and print the figures; `sluice bench latency --kafka HOST:PORT`
    /// measures end-to-end latency of `sluice run` processes from outside.
    Bench {
        /// A section run on its own: `latency` (end-to-end latency from outside; needs --kafka
        /// unless only socket or rate sources write to `--sinks console`).
        section: Option<String>,
        /// Lines of generated input (over 20 files).
        #[arg(long, default_value_t = 2_000_000)]
        lines: usize,
        /// Directory holding the built plugins (split_words.wasm, ...).
        #[arg(long, default_value = "examples/plugins")]
        plugins: PathBuf,
        /// Work directory for generated data.
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
        /// Run the Kafka benchmark instead, against this broker (e.g. 127.0.0.1:9092); with
        /// `latency`, the broker its cases write to and read from.
        #[arg(long)]
        kafka: Option<String>,
        /// Records for the Kafka benchmark.
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        /// Run only these sections: wordcount, boundary, filter, roles, state, growth, windowed (repeatable;
        /// default: all).
        #[arg(long)]
        only: Vec<String>,
        /// The largest state the `state` section fills (keys).
        #[arg(long, default_value_t = 10_000_000)]
        max_keys: u64,
        /// Internal: one run of the `state` section with this many keys, in this process.
        #[arg(long, hide = true)]
        state_child: Option<u64>,
        /// Internal: the `--state-child` run keeps a checkpoint.
        #[arg(long, hide = true)]
        state_checkpoint: bool,
        /// `latency`: sources, of baseline (no Sluice: the floor), kafka, socket, rate (comma-separated or repeated; default: all).
        #[arg(long, value_delimiter = ',')]
        sources: Vec<String>,
        /// `latency`: input rates in records/s, e.g. 1000,10k (default: 1000,10000,100000).
        #[arg(long, value_delimiter = ',')]
        rates: Vec<String>,
        /// `latency`: measured seconds per case (the first is not in the percentiles).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// `latency`: triggers, of default, continuous (default: both).
        #[arg(long, value_delimiter = ',')]
        triggers: Vec<String>,
        /// `latency`: Kafka sink guarantees, of at-least-once, exactly-once (default: both).
        #[arg(long, value_delimiter = ',')]
        guarantees: Vec<String>,
        /// `latency`: sinks, of kafka (read by a read_committed consumer), console (read from
        /// Sluice's standard output) (default: kafka).
        #[arg(long, value_delimiter = ',')]
        sinks: Vec<String>,
        /// `latency`: the continuous trigger's epoch interval.
        #[arg(long, default_value = "100ms")]
        continuous_interval: String,
    },
}

#[derive(clap::Args)]
struct ServerArgs {
    /// The server's URL (default: $SLUICE_SERVER or http://127.0.0.1:8080); the token comes
    /// from $SLUICE_TOKEN.
    #[arg(long)]
    server: Option<String>,
}

impl ServerArgs {
    fn client(&self) -> sluice::Result<sluice::client::Client> {
        let url = self
            .server
            .clone()
            .or_else(|| std::env::var("SLUICE_SERVER").ok())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        sluice::client::Client::new(&url, std::env::var("SLUICE_TOKEN").ok())
    }
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a plugin crate, ready to build (the SDK comes with this binary).
    New {
        /// The crate name (a-z, 0-9, _ and -).
        name: String,
        /// transform | source | batch-sink | foreach-sink
        #[arg(long, default_value = "transform")]
        world: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build the plugin crate in DIR (default: here) into a component.
    Build {
        /// The crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to put the .wasm (default: the crate's directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a component on sample rows (JSON lines) and print what it does.
    Test {
        /// The component (.wasm).
        file: PathBuf,
        /// Input rows, one JSON object per line (transforms and sinks).
        #[arg(long)]
        input: Option<PathBuf>,
        /// The input schema as DDL (`"id BIGINT, name STRING"`); inferred when absent.
        #[arg(long)]
        schema: Option<String>,
        /// A config entry `key=value` (the value read as TOML); repeat for more.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Grant a directory, `host:guest` (read-only) or `host:guest:rw`.
        #[arg(long = "grant-dir", value_name = "HOST:GUEST[:rw]")]
        grant_dir: Vec<String>,
        /// Grant outbound HTTP to `host:port`.
        #[arg(long = "grant-http", value_name = "HOST:PORT")]
        grant_http: Vec<String>,
        /// Grant an environment variable.
        #[arg(long = "grant-env", value_name = "NAME")]
        grant_env: Vec<String>,
        /// Batches to read from a source.
        #[arg(long, default_value_t = 3)]
        batches: usize,
    },
    /// Print a component's contract, world, exports, imports and, for a config, what it
    /// declares it needs.
    Inspect {
        /// The component (.wasm).
        file: PathBuf,
        /// A config entry `key=value` (the value read as TOML); repeat for more.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Batches, offsets, watermark and state sizes per operator.
    Inspect {
        /// The checkpoint location.
        dir: PathBuf,
    },
    /// Print a stateful operator's state at a batch as a table (like Spark's state data source).
    State {
        /// The checkpoint location.
        dir: PathBuf,
        /// Operator id (the step index); default: the only stateful operator.
        #[arg(long)]
        operator: Option<usize>,
        /// The state after this batch; default: the latest committed batch.
        #[arg(long)]
        batch: Option<u64>,
        /// Rows to print.
        #[arg(long, default_value_t = 20)]
        num_rows: usize,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sluice=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    eprintln!("stopping...");
}

/// A session for `spec`: fuel metering on only when a plugin sets `limits.fuel` (it costs
/// speed, see the README's benchmarks).
fn session_for(spec: &sluice::PipelineSpec) -> sluice::Result<sluice::Session> {
    let mut config = sluice::RuntimeConfig::new(&sluice::default_cache_dir());
    config.fuel = spec.plugins().any(|p| p.limits.fuel.is_some());
    sluice::Session::with_config(config)
}

async fn run(command: Command) -> sluice::Result<()> {
    match command {
        Command::Run { file, progress, watch, metrics, events, webhook } => {
            let spec = sluice::PipelineSpec::from_file(&file)?;
            let session = session_for(&spec)?;
            let _metrics = match metrics {
                Some(addr) => {
                    let m = std::sync::Arc::new(sluice::Metrics::new());
                    session.streams().add_listener(m.clone());
                    eprintln!("metrics at http://{addr}/metrics");
                    Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                        if let Err(e) = sluice::serve::serve_metrics(addr, m).await {
                            eprintln!("error: metrics endpoint: {e}");
                        }
                    })))
                }
                None => None,
            };
            if let Some(path) = events {
                session.streams().add_listener(std::sync::Arc::new(sluice::JsonLinesListener::new(&path)?));
            }
            if let Some(url) = webhook {
                session.streams().add_listener(std::sync::Arc::new(sluice::WebhookListener::new(&url)?));
            }
            let query = session.start(&spec).await?;
            let _watcher = watch.then(|| {
                tokio_util::task::AbortOnDropHandle::new(tokio::spawn(sluice::watch::watch(
                    query.clone(),
                    file.clone(),
                    spec.clone(),
                )))
            });
            let mut seen = 0u64;
            let mut line = status::StatusLine::new(!progress, spec.trigger == sluice::Trigger::AvailableNow);
            loop {
                tokio::select! {
                    r = query.await_termination() => {
                        line.finish();
                        if progress {
                            for p in query.recent_progress().iter().filter(|p| p.batch_id >= seen) {
                                eprintln!("{p}");
                            }
                        }
                        return r;
                    }
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)), if !progress => {
                        line.show(&query);
                    }
                    _ = tokio::signal::ctrl_c() => {
                        eprintln!("stopping...");
                        query.stop().await;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)), if progress => {
                        let fresh: Vec<_> = query.recent_progress().into_iter().filter(|p| p.batch_id >= seen).collect();
                        for p in fresh {
                            eprintln!("{p}");
                            seen = p.batch_id + 1;
                        }
                    }
                }
            }
        }
        Command::Serve { listen, state_dir, token, webhook, idle_event_interval } => {
            let mut opts = sluice::serve::ServeOptions::new(listen, state_dir);
            opts.token = token.or_else(|| std::env::var("SLUICE_TOKEN").ok()).filter(|t| !t.is_empty());
            opts.webhook = webhook;
            opts.idle_event_interval = Some(sluice::parse_duration(&idle_event_interval).map_err(|e| {
                sluice::Error::Config { location: None, message: format!("--idle-event-interval: {e}") }
            })?);
            sluice::serve::serve(opts, shutdown_signal()).await
        }
        Command::Submit { file, server } => {
            let v = server.client()?.submit(&file).await?;
            println!("{}", sluice::client::format_query(&v));
            Ok(())
        }
        Command::Status { query, server } => {
            let c = server.client()?;
            match query {
                Some(q) => {
                    let id = c.resolve(&q).await?;
                    let v = c.status(Some(&id)).await?;
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                }
                None => print!("{}", sluice::client::format_queries(&c.status(None).await?)),
            }
            Ok(())
        }
        Command::Stop { query, server } => {
            let c = server.client()?;
            let id = c.resolve(&query).await?;
            println!("{}", sluice::client::format_query(&c.stop(&id).await?));
            Ok(())
        }
        Command::Logs { query, lines, follow, server } => {
            let c = server.client()?;
            let id = c.resolve(&query).await?;
            status::print_events(&c, &id, lines, follow).await
        }
        Command::Validate { file } => {
            let spec = sluice::PipelineSpec::from_file(&file)?;
            let session = session_for(&spec)?;
            let v = session.check(&spec).await?;
            let cols: Vec<String> =
                v.schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect();
            println!("{}: OK; output columns: {}; delivery: {}", file.display(), cols.join(", "), v.guarantee);
            Ok(())
        }
        Command::Plugin { command: PluginCommand::New { name, world, dir } } => {
            let path = sluice::devkit::new_plugin(&name, &world, &dir, &sluice::default_cache_dir())?;
            println!(
                "created {} ({world} world); build it with: sluice plugin build {}",
                path.display(),
                path.display()
            );
            Ok(())
        }
        Command::Plugin { command: PluginCommand::Build { dir, out } } => {
            let wasm = sluice::devkit::build_plugin(&dir, out.as_deref(), &sluice::default_cache_dir()).await?;
            let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
            println!("built {} ({size} bytes)", wasm.display());
            Ok(())
        }
        Command::Plugin {
            command: PluginCommand::Test { file, input, schema, config, grant_dir, grant_http, grant_env, batches },
        } => {
            let config = config.iter().map(|c| sluice::parse_config_arg(c)).collect::<sluice::Result<Vec<_>>>()?;
            let mut t = sluice::devkit::PluginTest::new(&file, config);
            t.input = input;
            t.schema = schema;
            t.batches = batches;
            for d in grant_dir {
                let parts: Vec<&str> = d.split(':').collect();
                let (host, guest, rw) = match parts.as_slice() {
                    [h, g] => (*h, *g, false),
                    [h, g, "rw"] => (*h, *g, true),
                    _ => {
                        return Err(sluice::Error::Config {
                            location: None,
                            message: format!("--grant-dir {d}: expected HOST:GUEST or HOST:GUEST:rw"),
                        });
                    }
                };
                t.plugin.grants.dirs.push(sluice::DirGrant::new(host, guest, !rw));
            }
            t.plugin.grants.http = grant_http;
            t.plugin.grants.env = grant_env;
            let session = sluice::Session::try_new()?;
            print!("{}", sluice::devkit::test_plugin(&session, &t).await?);
            Ok(())
        }
        Command::Plugin { command: PluginCommand::Inspect { file, config } } => {
            let config = config.iter().map(|c| sluice::parse_config_arg(c)).collect::<sluice::Result<Vec<_>>>()?;
            let session = sluice::Session::try_new()?;
            print!("{}", session.inspect_plugin(&file, config).await?);
            Ok(())
        }
        Command::Checkpoint { command: CheckpointCommand::Inspect { dir } } => {
            print!("{}", sluice::inspect_checkpoint(&dir).await?);
            Ok(())
        }
        Command::Checkpoint { command: CheckpointCommand::State { dir, operator, batch, num_rows } } => {
            let t = sluice::read_state(&dir, operator, batch).await?;
            let shown = t.slice(0, num_rows.min(t.num_rows()));
            let table = arrow_cast::pretty::pretty_format_batches(&[shown]).map_err(sluice::Error::from)?;
            println!("{table}");
            println!("{} keys", t.num_rows());
            Ok(())
        }
        Command::Bench {
            section: Some(section),
            kafka,
            plugins,
            dir,
            sources,
            rates,
            seconds,
            triggers,
            guarantees,
            sinks,
            continuous_interval,
            ..
        } => match section.as_str() {
            "latency" => {
                let args = sluice::bench::latency::LatencyArgs {
                    kafka,
                    sources,
                    rates,
                    seconds,
                    triggers,
                    guarantees,
                    sinks,
                    continuous_interval,
                    plugins,
                    dir,
                };
                sluice::bench::latency::run(&args).await
            }
            other => Err(sluice::Error::Config {
                location: None,
                message: format!(
                    "unknown bench section {other:?}: `sluice bench latency` runs on its own; the other sections are chosen with --only"
                ),
            }),
        },
        Command::Bench { kafka: Some(bootstrap), records, plugins, dir, .. } => {
            sluice::kafka::bench::run(&bootstrap, records, &plugins, &dir).await
        }
        Command::Bench { dir, state_child: Some(keys), state_checkpoint, .. } => {
            sluice::bench::state_child(&dir, keys, state_checkpoint).await
        }
        Command::Bench { lines, plugins, dir, only, max_keys, .. } => {
            sluice::bench::run(lines, &plugins, &dir, &only, max_keys).await
        }
    }
}
