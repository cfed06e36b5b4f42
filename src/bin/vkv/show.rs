//! What `vkv` prints: the human forms, the JSON forms, and every failure with its exit code.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde::Serialize;
use serde_json::{Map, Value};

use vkv::client::ClientError;
use vkv::clock::VectorClock;
use vkv::protocol::{ReadResponse, StatusResponse, WriteResponse};

pub fn print_json<T: Serialize>(value: &T) {
    println!("{}", serde_json::to_string(value).expect("responses serialise"));
}

/// A command that did not succeed: its exit code, the message, and what goes with it — fields of
/// the JSON object under `--json`, text on stdout (a conflict's versions, a table) and more lines
/// on stderr (a hint) in the human form.
pub struct Failure {
    code: u8,
    message: String,
    fields: Map<String, Value>,
    stdout: Option<String>,
    stderr: Option<String>,
}

impl Failure {
    pub fn new(code: u8, message: String) -> Failure {
        Failure { code, message, fields: Map::new(), stdout: None, stderr: None }
    }

    /// Exit 2: the input or the flags are wrong.
    pub fn usage(message: String) -> Failure {
        Failure::new(2, message)
    }

    /// Adds a field to the JSON form.
    pub fn with(mut self, name: &str, value: impl Serialize) -> Failure {
        self.fields.insert(name.to_string(), serde_json::to_value(value).expect("fields serialise"));
        self
    }

    /// Adds the key's state (`key`, `versions`, `context`) to the JSON form.
    fn with_state(self, state: &ReadResponse) -> Failure {
        self.with("key", &state.key).with("versions", &state.versions).with("context", &state.context)
    }

    /// Text the human form prints on stdout before the message.
    pub fn stdout(mut self, text: String) -> Failure {
        self.stdout = Some(text);
        self
    }

    fn stderr(mut self, text: String) -> Failure {
        self.stderr = Some(text);
        self
    }

    /// Prints the failure (one JSON object on stdout, or the human form) and gives its exit code.
    pub fn report(self, json: bool) -> ExitCode {
        if json {
            let mut object = Map::new();
            object.insert("error".into(), Value::from(self.message));
            object.insert("exit_code".into(), Value::from(self.code));
            object.extend(self.fields);
            print_json(&object);
        } else {
            if let Some(text) = self.stdout {
                print!("{text}");
            }
            eprintln!("vkv: {}", self.message);
            if let Some(text) = self.stderr {
                eprint!("{text}");
            }
        }
        ExitCode::from(self.code)
    }
}

/// `text` as one shell word, safe to paste: single-quoted, each `'` written as `'\''`, so
/// nothing in it (`$`, backticks, `\`, newlines) is expanded by a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn context_arg(context: &VectorClock) -> String {
    context.counters().iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn versions_text(r: &ReadResponse) -> String {
    let mut text = String::new();
    for (i, v) in r.versions.iter().enumerate() {
        let _ = match &v.value {
            Some(value) => writeln!(text, "  sibling {}: {value:?}  clock {}", i + 1, v.clock),
            None => writeln!(text, "  sibling {}: (deleted)  clock {}", i + 1, v.clock),
        };
    }
    text
}

/// A key with siblings: every version and the command that resolves them.
fn siblings_text(r: &ReadResponse) -> String {
    format!(
        "CONFLICT: key {:?} has {} concurrent versions\n{}resolve with: vkv put {} <value> --context {}\n",
        r.key,
        r.versions.len(),
        versions_text(r),
        shell_quote(&r.key),
        context_arg(&r.context)
    )
}

/// `get`'s human form: `value  clock [..]`, or the siblings. A value that is empty or holds a
/// control character (a newline, an escape sequence that would drive the terminal) is shown
/// quoted and escaped, as siblings always are; `get --value-only` prints the bytes themselves.
pub fn read_text(r: &ReadResponse) -> String {
    match r.versions.as_slice() {
        [one] => {
            let value = match one.value.as_deref() {
                Some(value) if value.is_empty() || value.chars().any(char::is_control) => format!("{value:?}"),
                Some(value) => value.to_string(),
                None => "(deleted)".to_string(),
            };
            format!("{value}  clock {}\n", one.clock)
        }
        _ => siblings_text(r),
    }
}

pub fn written(w: &WriteResponse, what: &str, json: bool) {
    if json {
        print_json(w);
    } else {
        println!("{what} {:?} at replica {} · clock {}", w.key, w.replica, w.clock);
    }
}

/// Exit 1, with the context a first write needs.
pub fn not_found(absent: ReadResponse) -> Failure {
    let message =
        format!("key {:?} not found (context {} for a first write)", absent.key, context_arg(&absent.context));
    Failure::new(1, message).with_state(&absent)
}

/// Exit 4 for `get --value-only` of a key with siblings: the conflict goes to stderr.
pub fn siblings_for_value_only(read: ReadResponse) -> Failure {
    let message =
        format!("key {:?} has {} concurrent versions: --value-only prints one", read.key, read.versions.len());
    Failure::new(4, message).stderr(siblings_text(&read)).with_state(&read)
}

/// A refused conditional delete: what the replica holds, and the delete that would succeed.
pub fn delete_conflict(message: String, current: &ReadResponse) -> Failure {
    let stdout = format!(
        "CONFLICT: not deleted — key {:?} holds {} version(s) your context did not cover:\n{}\
         to delete them too, run: vkv delete {} --context {}\n",
        current.key,
        current.versions.len(),
        versions_text(current),
        shell_quote(&current.key),
        context_arg(&current.context)
    );
    Failure::new(4, message).stdout(stdout).with_state(current)
}

/// The failure for a client error: its exit code, message and details.
pub fn failure(e: ClientError, servers: &str) -> Failure {
    let message = e.to_string();
    match e {
        ClientError::Conflict { current, .. } => {
            let stdout = format!(
                "CONFLICT: not written — key {:?} holds {} version(s) your context did not cover:\n{}\
                 merge them, then write with: vkv put {} <merged value> --context {}\n",
                current.key,
                current.versions.len(),
                versions_text(&current),
                shell_quote(&current.key),
                context_arg(&current.context)
            );
            Failure::new(4, message).stdout(stdout).with_state(&current)
        }
        ClientError::QuorumNotMet { clock, .. } => {
            Failure::new(5, format!("written (clock {clock}), but not replicated enough: {message}"))
                .with("written", true)
                .with("clock", clock)
        }
        ClientError::Unreachable { url, reason } => {
            let hint = format!(
                "is a replica running at {servers}? start one with scripts/cluster.sh start, or pass --server / VKV_SERVER"
            );
            Failure::new(3, message)
                .stderr(format!("hint: {hint}\n"))
                .with("url", url)
                .with("cause", reason)
                .with("hint", hint)
        }
        ClientError::NoAnswer { url, reason } => Failure::new(3, message)
            .stderr("hint: read the key (vkv get) to see whether a write was applied\n".to_string())
            .with("url", url)
            .with("cause", reason),
        ClientError::BadAddress(_) | ClientError::InvalidKey(_) => Failure::usage(message),
        ClientError::Rejected { status, .. } => Failure::new(2, message).with("status", status),
        ClientError::Server { status, .. } => Failure::new(3, message).with("status", status),
        ClientError::NotVkv(_) | ClientError::BadResponse(_) => Failure::new(3, message),
    }
}

/// `status`'s human form: the replica, its members, and every peer as this replica sees it.
pub fn status_text(s: &StatusResponse) -> String {
    let mut text = format!("replica {} of {} · cluster {} · {} key(s)", s.replica, s.n, s.cluster, s.keys);
    if s.recovering {
        text.push_str(" · RECOVERING: pulling every peer's keys; writes are refused until then");
    }
    text.push('\n');
    for m in &s.members {
        let me = if m.id == s.replica { "  (this replica)" } else { "" };
        let _ = writeln!(text, "  member {}: {}{me}", m.id, m.address());
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
        let _ = writeln!(
            text,
            "  peer {} {}: {} · outbox {} key(s){membership}",
            p.id,
            p.address,
            if p.reachable { "reachable" } else { "UNREACHABLE" },
            p.outbox_depth
        );
    }
    text
}
