//! `vkv`: the command-line client.
//!
//! Exit codes: 0 success · 1 key not found · 2 bad input (flags, or a request the server
//! rejected) · 3 server unreachable or failing · 4 conflict: a write with a context was refused
//! because the replica holds versions that context did not cover (nothing was written; the
//! versions and the command to resolve are printed).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use vkv::client::{Client, ClientError};
use vkv::clock::VectorClock;
use vkv::protocol::{KeyErrorBody, ReadResponse, StatusResponse, WriteResponse};

/// Client for a vkv cluster: talk to any replica.
#[derive(Parser, Debug)]
#[command(name = "vkv", version)]
struct Cli {
    /// The replica to talk to (host:port).
    #[arg(long, short, default_value = "127.0.0.1:7000", global = true)]
    server: String,
    /// Print the raw JSON response instead of the human form.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read a key: its value and clock, or every conflicting value with its clock.
    Get {
        key: String,
        /// Read this many replicas (this one included), merge and repair them.
        #[arg(long)]
        r: Option<usize>,
    },
    /// Write a value. With --context (the one `get` printed) it replaces only what that read
    /// showed, and is refused (exit 4) if the replica holds more; without, it replaces whatever
    /// this replica holds (last writer wins). For read-modify-write, prefer `update`.
    Put {
        key: String,
        value: String,
        /// The clock read with `get`, comma-separated.
        #[arg(long, value_delimiter = ',')]
        context: Option<Vec<u64>>,
        /// Answer only once this many replicas (this one included) hold the write.
        #[arg(long)]
        w: Option<usize>,
    },
    /// Read the key, then write VALUE with the context read: replaces exactly what was read.
    /// If another write lands in between, shows the conflict instead of overwriting (exit 4).
    Update {
        key: String,
        value: String,
        /// Answer only once this many replicas (this one included) hold the write.
        #[arg(long)]
        w: Option<usize>,
    },
    /// Delete a key (a tombstone that replicates like a write).
    Delete {
        key: String,
        /// The clock read with `get`, comma-separated.
        #[arg(long, value_delimiter = ',')]
        context: Option<Vec<u64>>,
    },
    /// The replica's view: members, outbox depths, peer reachability, key count.
    Status,
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string(value).expect("responses serialise"));
}

/// `text` as one shell word, safe to paste: single-quoted, each `'` written as `'\''`, so
/// nothing in it (`$`, backticks, `\`, newlines) is expanded by a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn context_arg(context: &VectorClock) -> String {
    context.counters().iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn show_versions(r: &ReadResponse) {
    for (i, v) in r.versions.iter().enumerate() {
        match &v.value {
            Some(value) => println!("  sibling {}: {value:?}  clock {}", i + 1, v.clock),
            None => println!("  sibling {}: (deleted)  clock {}", i + 1, v.clock),
        }
    }
}

/// A refused conditional write: what the replica holds, and the exact command to resolve.
fn show_conflict(current: &ReadResponse, json: bool, message: &str) -> ExitCode {
    if json {
        print_json(&KeyErrorBody { error: message.to_string(), state: current.clone() });
    } else {
        println!(
            "CONFLICT: not written — key {:?} holds {} version(s) your context did not cover:",
            current.key,
            current.versions.len()
        );
        show_versions(current);
        println!(
            "merge them, then write with: vkv put {} <merged value> --context {}",
            shell_quote(&current.key),
            context_arg(&current.context)
        );
    }
    ExitCode::from(4)
}

fn show_read(r: &ReadResponse) {
    if r.is_conflict() {
        println!("CONFLICT: key {:?} has {} concurrent versions", r.key, r.versions.len());
        show_versions(r);
        println!("resolve with: vkv put {} <value> --context {}", shell_quote(&r.key), context_arg(&r.context));
    } else if let Some(v) = r.versions.first() {
        println!("{}  clock {}", v.value.as_deref().unwrap_or("(deleted)"), v.clock);
    }
}

fn show_write(w: &WriteResponse, what: &str) {
    println!("{what} {:?} at replica {} · clock {}", w.key, w.replica, w.clock);
}

fn show_status(s: &StatusResponse) {
    println!("replica {} of {} · cluster {} · {} key(s)", s.replica, s.n, s.cluster, s.keys);
    for m in &s.members {
        let me = if m.id == s.replica { "  (this replica)" } else { "" };
        println!("  member {}: {}{me}", m.id, m.address());
    }
    for p in &s.peers {
        let membership = match (p.same_cluster, &p.cluster) {
            (Some(false), Some(theirs)) if theirs != &s.cluster => {
                format!(" · MEMBERSHIP MISMATCH: its cluster is {theirs}, ours {}", s.cluster)
            }
            (Some(false), _) => format!(
                " · MEMBERSHIP MISMATCH: it refuses this replica ({})",
                p.membership_refusal.as_deref().unwrap_or("no reason given")
            ),
            _ => String::new(),
        };
        println!(
            "  peer {} {}: {} · outbox {} key(s){membership}",
            p.id,
            p.address,
            if p.reachable { "reachable" } else { "UNREACHABLE" },
            p.outbox_depth
        );
    }
}

fn fail(e: ClientError, json: bool) -> ExitCode {
    if let ClientError::Conflict { message, current } = &e {
        eprintln!("vkv: {message}");
        return show_conflict(current, json, message);
    }
    eprintln!("vkv: {e}");
    match e {
        ClientError::BadAddress(_) | ClientError::InvalidKey(_) | ClientError::Rejected { .. } => ExitCode::from(2),
        _ => ExitCode::from(3),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = match Client::new(&cli.server) {
        Ok(c) => c,
        Err(e) => return fail(e, cli.json),
    };
    let result = match cli.command {
        Command::Get { key, r } => match client.read_quorum(&key, r).await {
            Ok(r) if !r.versions.is_empty() => {
                if cli.json {
                    print_json(&r)
                } else {
                    show_read(&r)
                }
                Ok(())
            }
            Ok(absent) => {
                let error = format!("key {key:?} not found");
                if cli.json {
                    print_json(&KeyErrorBody { error, state: absent });
                } else {
                    eprintln!("vkv: {error} (context {} for a first write)", context_arg(&absent.context));
                }
                return ExitCode::from(1);
            }
            Err(e) => Err(e),
        },
        Command::Put { key, value, context, w } => client
            .put_quorum(&key, &value, context.map(VectorClock::from), w)
            .await
            .map(|w| if cli.json { print_json(&w) } else { show_write(&w, "wrote") }),
        Command::Update { key, value, w } => match client.read(&key).await {
            Ok(read) => client.put_quorum(&key, &value, Some(read.context), w).await.map(|w| {
                if cli.json {
                    print_json(&w)
                } else {
                    show_write(&w, "updated")
                }
            }),
            Err(e) => Err(e),
        },
        Command::Delete { key, context } => client.delete(&key, context.map(VectorClock::from)).await.map(|w| {
            if cli.json {
                print_json(&w)
            } else {
                show_write(&w, "deleted")
            }
        }),
        Command::Status => client.status().await.map(|s| if cli.json { print_json(&s) } else { show_status(&s) }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e, cli.json),
    }
}
