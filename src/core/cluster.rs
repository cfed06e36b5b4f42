//! Cluster membership: who the N replicas are and which clock position each one owns.
//!
//! Every replica is started with its own address and the addresses of the others (the seed's
//! `--host/--port` plus `--hosts/--ports`), or with its own address and the whole member list
//! (`--members`, the same on every replica: what a Kubernetes StatefulSet or any templated
//! deployment can hand out, as each pod's command line differs only in its own name). Sorting the N addresses by (host, port) gives the same
//! order on every replica; a replica's *id* is its 1-based place in that order, and it owns clock
//! position `id - 1`. Hosts compare as strings, so every replica must spell an address the same
//! way (`127.0.0.1` and `localhost` are different members).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A replica's id: its 1-based place in the cluster order. Clock position = id - 1.
pub type ReplicaId = u32;

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    /// 1-based place in the cluster order.
    pub id: ReplicaId,
    /// Host name or IP address, as given on the command line.
    pub host: String,
    /// HTTP port.
    pub port: u16,
}

impl Member {
    /// `host:port`, for URLs and logs.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// This member's position in every vector clock.
    pub fn position(&self) -> usize {
        self.id as usize - 1
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "replica {} ({}:{})", self.id, self.host, self.port)
    }
}

/// The whole cluster as seen from one replica: the ordered members and which one is "me".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    members: Vec<Member>,
    self_id: ReplicaId,
}

/// Why a set of flags does not describe a valid cluster. Each variant names the flag to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// `-N` disagrees with the number of peers given.
    #[error("-N is {n}, but --hosts/--ports list {peers} peers; N must be 1 + the number of peers")]
    WrongCount { n: usize, peers: usize },
    /// `--hosts` and `--ports` have different lengths.
    #[error("--hosts lists {hosts} hosts but --ports lists {ports} ports; give one port per host")]
    HostsPortsMismatch { hosts: usize, ports: usize },
    /// The same address appears twice.
    #[error("{flag} lists {addr} twice")]
    Duplicate { flag: &'static str, addr: String },
    /// A peer has this replica's own address.
    #[error("--hosts/--ports list this replica's own address {0} (--host/--port) as a peer")]
    SelfAsPeer(String),
    /// A host is empty or contains characters that cannot be part of a host name.
    #[error("{flag}: {host:?} is not a host name or IPv4 address (IPv6 addresses are not supported)")]
    BadHost { flag: &'static str, host: String },
    /// Port 0 cannot be reached by peers.
    #[error("{flag}: port 0 is not a usable port")]
    PortZero { flag: &'static str },
    /// N = 0 or too large for a clock.
    #[error("-N (or the length of --members) must be between 1 and {max}, got {n}")]
    BadN { n: usize, max: usize },
    /// A `--members` entry is not `host:port`.
    #[error("--members: {0:?} is not HOST:PORT (a port from 1 to 65535)")]
    BadMember(String),
    /// `--members` does not include this replica's own `--host:--port`.
    #[error(
        "--members does not list this replica's own address {0} (--host/--port); list every member, this one included"
    )]
    NotAMember(String),
    /// `-N` was given with `--members` and disagrees with it.
    #[error("-N is {n}, but --members lists {members} members (this one included); drop -N or make them agree")]
    MembersDisagree { n: usize, members: usize },
}

/// Largest cluster a layout accepts: clocks carry one counter per member.
pub const MAX_REPLICAS: usize = 64;

fn check_host(flag: &'static str, host: &str) -> Result<(), LayoutError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(LayoutError::BadHost { flag, host: host.to_string() })
    }
}

impl Layout {
    /// Builds the layout from the server's flags, validating them.
    pub fn from_flags(host: &str, port: u16, n: usize, hosts: &[String], ports: &[u16]) -> Result<Layout, LayoutError> {
        if n == 0 || n > MAX_REPLICAS {
            return Err(LayoutError::BadN { n, max: MAX_REPLICAS });
        }
        if hosts.len() != ports.len() {
            return Err(LayoutError::HostsPortsMismatch { hosts: hosts.len(), ports: ports.len() });
        }
        if n != hosts.len() + 1 {
            return Err(LayoutError::WrongCount { n, peers: hosts.len() });
        }
        let peers = hosts.iter().cloned().zip(ports.iter().copied()).collect();
        Layout::build(host, port, "--hosts", "--ports", peers)
    }

    /// Builds the layout from `--members` (every member as `host:port`, this replica included,
    /// in any order) and this replica's `--host`/`--port`. `n` (-N) is optional; if given, it
    /// must equal the number of members.
    pub fn from_members(host: &str, port: u16, n: Option<usize>, members: &[String]) -> Result<Layout, LayoutError> {
        const FLAG: &str = "--members";
        let mut all = Vec::with_capacity(members.len());
        for entry in members {
            let parsed = entry.rsplit_once(':').and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)));
            match parsed {
                Some(addr) if addr.1 != 0 => all.push(addr),
                _ => return Err(LayoutError::BadMember(entry.clone())),
            }
        }
        if all.is_empty() || all.len() > MAX_REPLICAS {
            return Err(LayoutError::BadN { n: all.len(), max: MAX_REPLICAS });
        }
        if let Some(n) = n.filter(|&n| n != all.len()) {
            return Err(LayoutError::MembersDisagree { n, members: all.len() });
        }
        let me = (host.to_string(), port);
        match all.iter().filter(|&a| *a == me).count() {
            0 => return Err(LayoutError::NotAMember(format!("{host}:{port}"))),
            1 => all.retain(|a| *a != me),
            _ => return Err(LayoutError::Duplicate { flag: FLAG, addr: format!("{host}:{port}") }),
        }
        Layout::build(host, port, FLAG, FLAG, all)
    }

    /// The part both flag forms share: checks this replica's address and its peers' (naming
    /// `host_flag`/`port_flag` in errors), and orders the members.
    fn build(
        host: &str,
        port: u16,
        host_flag: &'static str,
        port_flag: &'static str,
        peers: Vec<(String, u16)>,
    ) -> Result<Layout, LayoutError> {
        check_host("--host", host)?;
        if port == 0 {
            return Err(LayoutError::PortZero { flag: "--port" });
        }
        let me = (host.to_string(), port);
        let mut all = vec![me.clone()];
        for (h, p) in peers {
            check_host(host_flag, &h)?;
            if p == 0 {
                return Err(LayoutError::PortZero { flag: port_flag });
            }
            let addr = format!("{h}:{p}");
            let peer = (h, p);
            if peer == me {
                return Err(LayoutError::SelfAsPeer(addr));
            }
            if all.contains(&peer) {
                return Err(LayoutError::Duplicate { flag: host_flag, addr });
            }
            all.push(peer);
        }
        all.sort();
        let members: Vec<Member> = all
            .into_iter()
            .enumerate()
            .map(|(i, (host, port))| Member { id: i as ReplicaId + 1, host, port })
            .collect();
        let self_id = members
            .iter()
            .find(|m| m.host == me.0 && m.port == me.1)
            .map(|m| m.id)
            .expect("own address is a member by construction");
        Ok(Layout { members, self_id })
    }

    /// The N members in cluster (clock) order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The number of replicas, N.
    pub fn n(&self) -> usize {
        self.members.len()
    }

    /// This replica's id.
    pub fn self_id(&self) -> ReplicaId {
        self.self_id
    }

    /// This replica's member entry.
    pub fn me(&self) -> &Member {
        &self.members[self.self_id as usize - 1]
    }

    /// Every member except this one.
    pub fn peers(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.id != self.self_id)
    }

    /// The member with this id, if any.
    pub fn member(&self, id: ReplicaId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// A stable text form of the member order, stored in the data dir to recognise its cluster.
    pub fn fingerprint(&self) -> String {
        self.members.iter().map(Member::address).collect::<Vec<_>>().join(",")
    }

    /// The member order for the startup log: `1=127.0.0.1:7000, 2=127.0.0.1:7001, …`.
    pub fn describe(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.id, m.address())).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<String> {
        vec!["127.0.0.1".to_string(); n]
    }

    #[test]
    fn order_is_by_host_then_port_and_same_everywhere() {
        let a = Layout::from_flags("127.0.0.1", 7002, 3, &hosts(2), &[7000, 7001]).unwrap();
        let b = Layout::from_flags("127.0.0.1", 7000, 3, &hosts(2), &[7002, 7001]).unwrap();
        assert_eq!(a.members(), b.members());
        assert_eq!(a.self_id(), 3);
        assert_eq!(b.self_id(), 1);
        assert_eq!(a.me().position(), 2);
        assert_eq!(a.fingerprint(), "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002");
        assert_eq!(a.peers().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let err = Layout::from_flags("127.0.0.1", 7000, 4, &hosts(2), &[7001, 7002]).unwrap_err();
        assert!(err.to_string().contains("-N"), "{err}");
        let err = Layout::from_flags("127.0.0.1", 7000, 3, &hosts(2), &[7001]).unwrap_err();
        assert!(err.to_string().contains("--ports"), "{err}");
        let err = Layout::from_flags("127.0.0.1", 7000, 3, &hosts(2), &[7001, 7001]).unwrap_err();
        assert_eq!(err, LayoutError::Duplicate { flag: "--hosts", addr: "127.0.0.1:7001".into() });
        assert!(err.to_string().contains("--hosts"), "{err}");
        let err = Layout::from_flags("127.0.0.1", 7000, 3, &hosts(2), &[7000, 7001]).unwrap_err();
        assert_eq!(err, LayoutError::SelfAsPeer("127.0.0.1:7000".into()));
        let err = Layout::from_flags("127.0.0.1", 0, 1, &[], &[]).unwrap_err();
        assert!(err.to_string().contains("--port"), "{err}");
        let err = Layout::from_flags("bad host", 7000, 1, &[], &[]).unwrap_err();
        assert!(err.to_string().contains("--host"), "{err}");
        let err = Layout::from_flags("::1", 7000, 1, &[], &[]).unwrap_err();
        assert!(err.to_string().contains("IPv6"), "{err}");
        let err = Layout::from_flags("127.0.0.1", 7000, 0, &[], &[]).unwrap_err();
        assert!(err.to_string().contains("-N"), "{err}");
    }

    #[test]
    fn single_replica_cluster_is_valid() {
        let l = Layout::from_flags("127.0.0.1", 7000, 1, &[], &[]).unwrap();
        assert_eq!(l.n(), 1);
        assert_eq!(l.peers().count(), 0);
    }

    /// `--members` gives every replica the same list; each finds itself by --host/--port and
    /// gets the same ids as with --hosts/--ports.
    #[test]
    fn members_list_gives_the_same_layout_as_peer_flags() {
        let members: Vec<String> = ["kv-2.vkv:7000", "kv-0.vkv:7000", "kv-1.vkv:7000"].map(String::from).to_vec();
        let a = Layout::from_members("kv-1.vkv", 7000, None, &members).unwrap();
        let b =
            Layout::from_flags("kv-1.vkv", 7000, 3, &["kv-0.vkv".into(), "kv-2.vkv".into()], &[7000, 7000]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.self_id(), 2);
        assert_eq!(a.fingerprint(), "kv-0.vkv:7000,kv-1.vkv:7000,kv-2.vkv:7000");
        assert_eq!(Layout::from_members("kv-1.vkv", 7000, Some(3), &members).unwrap(), a);
    }

    #[test]
    fn bad_members_lists_name_the_flag() {
        let list = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        let cases: &[(&str, Option<usize>, &str)] = &[
            ("a:7000,b:7000", Some(3), "-N is 3, but --members lists 2"),
            ("a:7000,b", None, "--members: \"b\" is not HOST:PORT"),
            ("a:7000,b:0", None, "--members: \"b:0\""),
            ("a:7000,b:x", None, "--members: \"b:x\""),
            ("", None, "--members: \"\""),
            ("b:7000,c:7000", None, "does not list this replica's own address a:7000"),
            ("a:7000,a:7000", None, "--members lists a:7000 twice"),
            ("a:7000,b:7000,b:7000", None, "--members lists b:7000 twice"),
            ("a:7000,bad host:7000", None, "--members: \"bad host\""),
        ];
        for (members, n, needle) in cases {
            let err = Layout::from_members("a", 7000, *n, &list(members)).unwrap_err().to_string();
            assert!(err.contains(needle), "{members:?}: {err:?} should contain {needle:?}");
        }
        let many: Vec<String> = (1..=MAX_REPLICAS as u16 + 1).map(|p| format!("a:{p}")).collect();
        let err = Layout::from_members("a", 1, None, &many).unwrap_err();
        assert_eq!(err, LayoutError::BadN { n: MAX_REPLICAS + 1, max: MAX_REPLICAS });
    }
}
