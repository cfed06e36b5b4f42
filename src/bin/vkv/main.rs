//! `vkv`: the command-line client — flags, the commands, and their exit codes.
//!
//! Exit codes (the same table is in `vkv --help` and the README):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | key not found (or deleted) |
//! | 2 | usage: bad flags or input (checked by the CLI), or a request the server rejected (4xx) |
//! | 3 | unreachable (no endpoint accepted a connection), the server failed (5xx), or what answered is not vkv; `status --cluster`: a member is down or recovering |
//! | 4 | conflict: a write with a context was refused, nothing written (versions and the command to resolve are printed); `get --value-only` of a key with siblings |
//! | 5 | written, but not replicated enough: durable at the replica that answered and queued for every peer, yet `--w` replicas did not acknowledge it in time |
//!
//! Under `--json` every outcome is exactly one JSON object on stdout: the API's answer, or for a
//! failure `{"error": "...", "exit_code": N, ...}` (with the key's state for not found and
//! conflicts, `written` and `clock` for code 5, the cause and a hint when unreachable).

mod cluster;
mod show;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use show::{print_json, Failure};
use vkv::client::Client;
use vkv::clock::VectorClock;
use vkv::protocol::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};

/// The replica asked when neither `--server` nor `VKV_SERVER` names one.
const DEFAULT_SERVER: &str = "127.0.0.1:7000";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  key not found
  2  usage error (bad flags or input), or the server rejected the request (4xx)
  3  unreachable, the server failed (5xx), or not a vkv server; status --cluster: a member is not up
  4  conflict: a write with --context (or update) was refused, nothing written;
     get --value-only of a key with siblings
  5  written and durable at the replica that answered, but --w replicas did not acknowledge it in time
Under --json every outcome, errors included, is one JSON object on stdout.";

/// Client for a vkv cluster: talk to any replica.
#[derive(Parser, Debug)]
#[command(name = "vkv", version, after_help = EXIT_CODES)]
struct Cli {
    /// The replica to talk to (host:port), or several comma-separated: the next is tried only
    /// when a connection fails. Default: $VKV_SERVER, else 127.0.0.1:7000.
    #[arg(long, short, global = true)]
    server: Option<String>,
    /// Print JSON: the API's response, or {"error", "exit_code", ...} for every failure.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Where a written value comes from: the argument, stdin (`-`), or a file.
#[derive(Args, Debug)]
struct ValueArgs {
    /// The value; `-` reads it from stdin (every byte, as UTF-8 text: a trailing newline is kept).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    value: Option<String>,
    /// Read the value from this file (every byte, as UTF-8 text) instead of the argument.
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read a key: its value and clock, or every conflicting value with its clock.
    Get {
        key: String,
        /// Read this many replicas (this one included), merge and repair them.
        #[arg(long)]
        r: Option<usize>,
        /// Print only the value and a newline (siblings: exit 4, the conflict on stderr).
        #[arg(long)]
        value_only: bool,
    },
    /// Write a value. With --context (the one `get` printed) it replaces only what that read
    /// showed, and is refused (exit 4) if the replica holds more; without, it replaces whatever
    /// this replica holds (last writer wins). For read-modify-write, prefer `update`.
    Put {
        key: String,
        #[command(flatten)]
        value: ValueArgs,
        /// The context read with `get`: 2,1,0 or [2,1,0] (spaces allowed).
        #[arg(long, value_parser = parse_context)]
        context: Option<VectorClock>,
        /// Answer only once this many replicas (this one included) hold the write (exit 5 if not in time).
        #[arg(long)]
        w: Option<usize>,
    },
    /// Read the key, then write VALUE with the context read: replaces exactly what was read.
    /// If another write lands in between, shows the conflict instead of overwriting (exit 4).
    Update {
        key: String,
        #[command(flatten)]
        value: ValueArgs,
        /// Answer only once this many replicas (this one included) hold the write (exit 5 if not in time).
        #[arg(long)]
        w: Option<usize>,
    },
    /// Delete a key (a tombstone that replicates like a write).
    Delete {
        key: String,
        /// The context read with `get`: 2,1,0 or [2,1,0] (spaces allowed).
        #[arg(long, value_parser = parse_context)]
        context: Option<VectorClock>,
        /// Answer only once this many replicas (this one included) hold the delete (exit 5 if not in time).
        #[arg(long)]
        w: Option<usize>,
    },
    /// List keys in byte order, one per line, quoted and escaped as the CLI prints keys
    /// (`--json`: one object {"keys": [...]}); pages through them all.
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Keys asked per request.
        #[arg(long, default_value_t = DEFAULT_LIST_LIMIT,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_LIST_LIMIT as u64))]
        page_size: usize,
    },
    /// The replica's view: members, outbox depths, peer reachability, key count. Exits 0 when
    /// the replica answers, whatever it says of its peers.
    Status {
        /// Ask every member for its own status: one table, exit 3 unless every member is up.
        #[arg(long)]
        cluster: bool,
    },
}

/// A context as `get` prints it (`2,1,0`) or as `--json` does (`[2,1,0]`, spaces allowed).
fn parse_context(text: &str) -> Result<VectorClock, String> {
    let trimmed = text.trim();
    let inner = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(trimmed);
    let counters = inner
        .split(',')
        .map(|c| {
            c.trim().parse::<u64>().map_err(|_| {
                format!("{:?} is not a counter: a context is comma-separated counters, 2,1,0 or [2,1,0]", c.trim())
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VectorClock::from(counters))
}

/// The value to write, from the argument, stdin (`-`) or `--file`.
fn read_value(args: ValueArgs) -> Result<String, Failure> {
    let (bytes, from) = match (args.value, args.file) {
        (Some(value), None) if value != "-" => return Ok(value),
        (Some(_), None) => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| Failure::usage(format!("cannot read the value from stdin: {e}")))?;
            (bytes, "stdin".to_string())
        }
        (None, Some(path)) => {
            let bytes = std::fs::read(&path)
                .map_err(|e| Failure::usage(format!("cannot read the value from {}: {e}", path.display())))?;
            (bytes, path.display().to_string())
        }
        _ => return Err(Failure::usage("give the value, `-` to read it from stdin, or --file F (not both)".into())),
    };
    String::from_utf8(bytes)
        .map_err(|_| Failure::usage(format!("the value from {from} is not UTF-8: vkv values are text")))
}

/// Every page of keys: printed as they come, or gathered into one JSON object.
async fn list(client: &Client, prefix: &str, page_size: usize, json: bool, servers: &str) -> Result<(), Failure> {
    let (mut after, mut all) = (None::<String>, Vec::new());
    loop {
        let page =
            client.list(prefix, after.as_deref(), Some(page_size)).await.map_err(|e| show::failure(e, servers))?;
        if json {
            all.extend(page.keys);
        } else {
            let mut out = std::io::stdout().lock();
            for key in &page.keys {
                if writeln!(out, "{key:?}").is_err() {
                    return Ok(()); // the reader went away (`| head`): nothing more to say
                }
            }
        }
        match page.next {
            None => break,
            // The cursor must move forward, or a faulty server would keep this loop going.
            Some(next) if after.as_ref().is_some_and(|a| &next <= a) => {
                return Err(Failure::new(3, format!("the server's cursor did not advance past {next:?}")));
            }
            next => after = next,
        }
    }
    if json {
        print_json(&serde_json::json!({ "keys": all }));
    }
    Ok(())
}

async fn run(command: Command, client: &Client, json: bool, servers: &str) -> Result<(), Failure> {
    let failed = |e| show::failure(e, servers);
    match command {
        Command::Get { key, r, value_only } => {
            let read = client.read_quorum(&key, r).await.map_err(failed)?;
            if read.versions.is_empty() {
                return Err(show::not_found(read));
            }
            if value_only && read.is_conflict() {
                return Err(show::siblings_for_value_only(read));
            }
            if json {
                print_json(&read);
            } else if value_only {
                let value = read.versions[0].value.as_deref().unwrap_or_default();
                let _ = writeln!(std::io::stdout(), "{value}");
            } else {
                print!("{}", show::read_text(&read));
            }
        }
        Command::Put { key, value, context, w } => {
            let value = read_value(value)?;
            let written = client.write(&key, Some(&value), context, w).await.map_err(failed)?;
            show::written(&written, "wrote", json);
        }
        Command::Update { key, value, w } => {
            let value = read_value(value)?;
            let read = client.read(&key).await.map_err(failed)?;
            let written = client.write(&key, Some(&value), Some(read.context), w).await.map_err(failed)?;
            show::written(&written, "updated", json);
        }
        Command::Delete { key, context, w } => {
            let written = client.write(&key, None, context, w).await.map_err(|e| match e {
                // The way out of a refused delete is a delete with the context returned.
                vkv::client::ClientError::Conflict { message, current } => show::delete_conflict(message, &current),
                e => failed(e),
            })?;
            show::written(&written, "deleted", json);
        }
        Command::List { prefix, page_size } => list(client, &prefix, page_size, json, servers).await?,
        Command::Status { cluster: false } => {
            let status = client.status().await.map_err(failed)?;
            if json {
                print_json(&status);
            } else {
                print!("{}", show::status_text(&status));
            }
        }
        Command::Status { cluster: true } => cluster::report(client, json, servers).await?,
    }
    Ok(())
}

/// Parses the flags; a usage error under `--json` is a JSON object like every other failure.
fn parse_flags() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        let json = std::env::args().skip(1).take_while(|a| a != "--").any(|a| a == "--json");
        if !json || !e.use_stderr() {
            e.exit(); // --help and --version print as usual; usage errors exit 2
        }
        // clap's message without its usage lines and hints: "error: …" and any lines that list
        // what is missing, joined into one line.
        let rendered = e.render().to_string();
        let message = rendered
            .lines()
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
            .trim_start_matches("error: ")
            .to_string();
        let message = if message.is_empty() { "bad usage".to_string() } else { message };
        Failure::usage(message).report(true)
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match parse_flags() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let servers = cli
        .server
        .clone()
        .or_else(|| std::env::var("VKV_SERVER").ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let outcome = match Client::new(&servers) {
        Ok(client) => run(cli.command, &client, cli.json, &servers).await,
        Err(e) => Err(show::failure(e, &servers)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(cli.json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_parse_in_both_printed_forms() {
        let want = VectorClock::from(vec![2, 1, 0]);
        for text in ["2,1,0", "[2,1,0]", "[2, 1, 0]", " 2 , 1 , 0 ", "[ 2,1,0 ]"] {
            assert_eq!(parse_context(text).as_ref(), Ok(&want), "{text:?}");
        }
        for bad in ["", "[]", "a,b", "[2,1,0", "2,1,0]", "2;1;0", "-1,0", "2,,0", "[[2,1,0]]"] {
            assert!(parse_context(bad).is_err(), "{bad:?}");
        }
    }
}
