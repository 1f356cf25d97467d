//! The `sluice` command: run or validate a pipeline file, or run the benchmark.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    },
    /// Check a pipeline file without running it: options, plugins, SQL and output mode.
    Validate {
        /// The pipeline file (TOML).
        file: PathBuf,
    },
    /// Look into a checkpoint.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Run the word-count benchmark and print the figures.
    Bench {
        /// Lines of generated input (over 20 files).
        #[arg(long, default_value_t = 2_000_000)]
        lines: usize,
        /// Directory holding the built plugins (split_words.wasm, ...).
        #[arg(long, default_value = "examples/plugins")]
        plugins: PathBuf,
        /// Work directory for generated data.
        #[arg(long, default_value = "target/bench-data")]
        dir: PathBuf,
        /// Run the Kafka benchmark instead, against this broker (e.g. 127.0.0.1:9092).
        #[arg(long)]
        kafka: Option<String>,
        /// Records for the Kafka benchmark.
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
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

async fn run(command: Command) -> sluice::Result<()> {
    match command {
        Command::Run { file, progress } => {
            let spec = sluice::PipelineSpec::from_file(&file)?;
            let session = sluice::Session::try_new()?;
            let query = session.start(&spec).await?;
            let mut seen = 0u64;
            loop {
                tokio::select! {
                    r = query.await_termination() => {
                        if progress {
                            for p in query.recent_progress().iter().filter(|p| p.batch_id >= seen) {
                                eprintln!("{p}");
                            }
                        }
                        return r;
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
        Command::Validate { file } => {
            let spec = sluice::PipelineSpec::from_file(&file)?;
            let session = sluice::Session::try_new()?;
            let schema = session.validate(&spec).await?;
            let cols: Vec<String> = schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect();
            println!("{}: OK; output columns: {}", file.display(), cols.join(", "));
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
        Command::Bench { kafka: Some(bootstrap), records, plugins, dir, .. } => {
            sluice::kafka::bench::run(&bootstrap, records, &plugins, &dir).await
        }
        Command::Bench { lines, plugins, dir, .. } => sluice::bench::run(lines, &plugins, &dir).await,
    }
}
