//! The `signalgate` command: parses the command line, sets up logging and hands over to the
//! library (`server::run`, `Config::validate`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use signalgate::config::Config;
use signalgate::{journal, server, tune};

#[global_allocator]
static GLOBAL: signalgate::alloc::Allocator = signalgate::alloc::Allocator;

/// Low-latency trading appliance: signals in, risk-checked orders out.
#[derive(Parser)]
#[command(name = "signalgate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node. With no --config it runs the embedded default: demo symbols, quote
    /// simulator, paper venue and a demo account whose key is printed. SIGNALGATE_<SECTION>_<KEY>
    /// environment variables override the file.
    Run {
        /// TOML configuration file (see signalgate.example.toml).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Start even if the journal is damaged: cut it back to its last good record (later
        /// segments are kept as *.damaged) and log exactly what was dropped.
        #[arg(long)]
        repair_journal: bool,
    },
    /// Apply the PostgreSQL schema (schema/*.sql, built in) to the history database. Applies only
    /// what is missing; exit code 0 when the schema is up to date, 1 when something failed.
    Migrate {
        /// Connection string (default: postgres.url of the configuration).
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        /// TOML configuration file (for postgres.url).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Read a node's journal (its data directory).
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Validate a configuration file (with environment overrides applied) and explain every
    /// problem. Exit code 0 when valid, 1 otherwise.
    CheckConfig {
        /// TOML configuration file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Host tuning for low latency.
    Tune {
        #[command(subcommand)]
        command: TuneCommand,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Check every record (lengths, checksums, sequence numbers, decoding). Exit code 0 when
    /// sound (a torn tail left by a crash is reported, not counted as damage), 1 when damaged,
    /// 2 when unreadable.
    Verify {
        /// The data directory (`journal.dir`).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print the events, one per line.
    Inspect {
        /// The data directory (`journal.dir`).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// First sequence number to print.
        #[arg(long, value_name = "SEQ", default_value_t = 1)]
        from: u64,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TuneCommand {
    /// Check this host against the node's topology (cores, isolation, governor, huge pages,
    /// limits, listen backlog, io_uring): ok / warn / fail per item, with the fix. Exit code 1
    /// when an item fails, 0 otherwise (warnings included).
    Check {
        /// TOML configuration file (default: the embedded default).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// The environment, for `SIGNALGATE_*` overrides. `vars_os`: a variable that is not UTF-8 must
/// not crash the node; it is read lossily and then fails validation if it is one of ours.
fn environment() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
}

fn load(path: Option<&std::path::Path>) -> Result<Config, Vec<String>> {
    let cfg = Config::load(path, environment()).map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let problems = server::validate(&cfg);
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(problems.iter().map(ToString::to_string).collect())
    }
}

/// `path` as the absolute path it names from the working directory, for messages.
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn init_logging(filter: &str) {
    let env = env_logger::Env::default().default_filter_or(filter);
    env_logger::Builder::from_env(env).format_timestamp_micros().init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Migrate { postgres, config } => {
            let url = match postgres {
                Some(url) => url,
                None => match load(config.as_deref()) {
                    Ok(cfg) => cfg.postgres.url,
                    Err(problems) => {
                        for p in problems {
                            eprintln!("signalgate: {p}");
                        }
                        return ExitCode::from(2);
                    }
                },
            };
            if url.is_empty() {
                println!("no PostgreSQL configured (postgres.url is empty): nothing to migrate");
                return ExitCode::SUCCESS;
            }
            match signalgate::postgres::migrate_blocking(&url) {
                Ok(report) => {
                    println!("{}", signalgate::postgres::summary(&report));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("signalgate migrate: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Journal { command } => {
            let mut out = std::io::stdout().lock();
            let code = match command {
                JournalCommand::Verify { dir } => journal::tools::verify(&dir, &mut out),
                JournalCommand::Inspect { dir, from, json } => journal::tools::inspect(&dir, from, json, &mut out),
            };
            match code {
                Ok(c) => ExitCode::from(c),
                Err(e) => {
                    eprintln!("signalgate: {e}");
                    ExitCode::from(journal::tools::UNREADABLE)
                }
            }
        }
        Command::Run { config, repair_journal } => {
            let cfg = match load(config.as_deref()) {
                Ok(cfg) => cfg,
                Err(problems) => {
                    eprintln!("signalgate: invalid configuration:");
                    for p in problems {
                        eprintln!("  {p}");
                    }
                    return ExitCode::from(1);
                }
            };
            init_logging(&cfg.node.log);
            match &config {
                Some(file) => log::info!("configuration: {}", absolute(file).display()),
                None => log::info!("configuration: the embedded default (no --config)"),
            }
            match server::run(cfg, server::RunOptions { repair_journal }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    eprintln!("signalgate: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Tune { command: TuneCommand::Check { config } } => {
            // The topology may name cores this host lacks: report that as an item, not an error.
            let cfg = match Config::load(config.as_deref(), environment()) {
                Ok(cfg) => cfg,
                Err(problems) => {
                    for p in problems {
                        eprintln!("signalgate: {p}");
                    }
                    return ExitCode::from(2);
                }
            };
            println!(
                "signalgate tune check: hot core(s) {:?}, fan-out core(s) {:?}",
                cfg.topology.hot, cfg.topology.fanout
            );
            let (text, code) = tune::report(&tune::check(&cfg, &tune::Host::current()));
            print!("{text}");
            ExitCode::from(code)
        }
        Command::CheckConfig { file } => match load(Some(&file)) {
            Ok(cfg) => {
                println!(
                    "{}: valid ({} symbols, {} tiers, http {}, admin {}, data dir {})",
                    file.display(),
                    cfg.symbols.len(),
                    cfg.tiers.len(),
                    cfg.http.addr,
                    cfg.admin.addr,
                    cfg.journal.dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(problems) => {
                eprintln!("{}: {} problem(s):", file.display(), problems.len());
                for p in problems {
                    eprintln!("  {p}");
                }
                ExitCode::from(1)
            }
        },
    }
}
