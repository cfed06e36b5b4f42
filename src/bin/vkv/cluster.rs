//! `vkv status --cluster`: the member list from one replica, then every member's own `/status`,
//! asked concurrently, in one table. Exit 0 only when every member is up.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;

use vkv::client::Client;
use vkv::cluster::ReplicaId;

use crate::show::{self, print_json, Failure};

/// How long a member may take to answer before it counts as down: a hung replica must not hang
/// the operator's view.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum State {
    Up,
    Recovering,
    Unhealthy,
    Down,
}

/// One member as it reports itself.
#[derive(Debug, Serialize)]
struct MemberHealth {
    id: ReplicaId,
    address: String,
    state: State,
    /// Keys it stores (`null` when down).
    keys: Option<u64>,
    /// Keys it still owes each peer, by peer id.
    outbox_depth: BTreeMap<ReplicaId, u64>,
    /// Why it counts as down.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn probe(id: ReplicaId, address: String) -> MemberHealth {
    let answer = match Client::with_timeout(&address, PROBE_TIMEOUT) {
        Ok(client) => client.status().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let answer = answer.and_then(|s| {
        // Something else on the member's port (or a replica of another layout) is not this member.
        if s.replica == id {
            Ok(s)
        } else {
            Err(format!("answered as replica {}, not {id}", s.replica))
        }
    });
    match answer {
        Ok(s) => MemberHealth {
            id,
            address,
            state: match s.health.as_deref() {
                Some("unhealthy") => State::Unhealthy,
                _ if s.recovering => State::Recovering,
                _ => State::Up,
            },
            keys: Some(s.keys),
            outbox_depth: s.peers.iter().map(|p| (p.id, p.outbox_depth)).collect(),
            error: None,
        },
        Err(error) => MemberHealth {
            id,
            address,
            state: State::Down,
            keys: None,
            outbox_depth: BTreeMap::new(),
            error: Some(error),
        },
    }
}

fn table(members: &[MemberHealth]) -> String {
    let width = members.iter().map(|m| m.address.len()).max().unwrap_or(0).max("address".len());
    let mut text =
        format!("{:<3} {:<width$}  {:<10}  {:>8}  outbox depth per peer\n", "id", "address", "state", "keys");
    for m in members {
        let state = match m.state {
            State::Up => "up",
            State::Recovering => "recovering",
            State::Unhealthy => "unhealthy",
            State::Down => "down",
        };
        let keys = m.keys.map_or("-".to_string(), |k| k.to_string());
        let outbox = match &m.error {
            Some(error) => format!("- ({error})"),
            None => m.outbox_depth.iter().map(|(peer, depth)| format!("{peer}:{depth}")).collect::<Vec<_>>().join(" "),
        };
        let line = format!("{:<3} {:<width$}  {state:<10}  {keys:>8}  {outbox}", m.id, m.address);
        let _ = writeln!(text, "{}", line.trim_end());
    }
    text
}

/// Prints the cluster's table (or one JSON object with a `members` array); fails with exit 3
/// when a member is down or recovering.
pub async fn report(client: &Client, json: bool, servers: &str) -> Result<(), Failure> {
    let first = client.status().await.map_err(|e| show::failure(e, servers))?;
    let mut probes = JoinSet::new();
    for member in first.members {
        // The replica that answered is asked again where it answered: the member list names it
        // as the cluster knows it (kv1:7000 in docker), which this machine may not resolve.
        let address = if member.id == first.replica { client.answering_endpoint() } else { member.address() };
        probes.spawn(probe(member.id, address));
    }
    let mut members = Vec::new();
    while let Some(joined) = probes.join_next().await {
        members.extend(joined.ok());
    }
    members.sort_by_key(|m| m.id);
    let not_up: Vec<String> = members
        .iter()
        .filter(|m| m.state != State::Up)
        .map(|m| {
            let state = match m.state {
                State::Down => "down",
                State::Unhealthy => "unhealthy (its store is failing)",
                _ => "recovering",
            };
            format!("replica {} {state}", m.id)
        })
        .collect();
    if not_up.is_empty() {
        if json {
            print_json(&serde_json::json!({ "members": members }));
        } else {
            print!("{}", table(&members));
            println!("all {} members up", members.len());
        }
        return Ok(());
    }
    let message = format!("{} of {} members not up: {}", not_up.len(), members.len(), not_up.join(", "));
    let text = table(&members);
    Err(Failure::new(3, message).stdout(text).with("members", members))
}
