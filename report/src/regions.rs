//! The study's regions and the round-trip times between them, read from one data file
//! (`report/regions.json`) that both the simulated WAN and the GCP scripts use.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One region: a replica and a client site.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Region {
    /// GCP's name, e.g. `us-east1`.
    pub name: String,
    /// Where it is, for people.
    pub place: String,
    /// The GCP zone the scripts put its VM in.
    pub zone: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Pair {
    a: String,
    b: String,
    ms: f64,
}

#[derive(Debug, Clone, Deserialize)]
struct File {
    source: String,
    date: String,
    intra_region_rtt_ms: f64,
    regions: Vec<Region>,
    rtt_ms: Vec<Pair>,
}

/// The regions and their RTT matrix.
#[derive(Debug, Clone)]
pub struct Regions {
    /// Where the figures come from, for the report.
    pub source: String,
    /// When they were published or read.
    pub date: String,
    /// The regions, in cluster order: region `i` hosts replica `i + 1`.
    pub list: Vec<Region>,
    /// RTT in ms, `rtt[i][j]`; the diagonal is the intra-region RTT.
    rtt: Vec<Vec<f64>>,
}

impl Regions {
    /// Reads and checks the data file: every pair of distinct regions exactly once, RTTs
    /// positive and below 1 s, names unique.
    pub fn load(path: &Path) -> Result<Regions, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: File = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Regions::from_file(file).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn from_file(file: File) -> Result<Regions, String> {
        let n = file.regions.len();
        if !(2..=250).contains(&n) {
            return Err(format!("{n} regions; between 2 and 250 expected"));
        }
        let index: BTreeMap<&str, usize> = file.regions.iter().enumerate().map(|(i, r)| (r.name.as_str(), i)).collect();
        if index.len() != n {
            return Err("region names must be unique".into());
        }
        let ok = |ms: f64| ms.is_finite() && ms > 0.0 && ms < 1000.0;
        if !ok(file.intra_region_rtt_ms) {
            return Err(format!("intra_region_rtt_ms {} is not in (0, 1000)", file.intra_region_rtt_ms));
        }
        let mut rtt = vec![vec![f64::NAN; n]; n];
        for (i, row) in rtt.iter_mut().enumerate() {
            row[i] = file.intra_region_rtt_ms;
        }
        for p in &file.rtt_ms {
            let (Some(&a), Some(&b)) = (index.get(p.a.as_str()), index.get(p.b.as_str())) else {
                return Err(format!("pair {} - {} names an unknown region", p.a, p.b));
            };
            if a == b || !ok(p.ms) || !rtt[a][b].is_nan() {
                return Err(format!("pair {} - {}: a duplicate, a self pair or an RTT out of (0, 1000) ms", p.a, p.b));
            }
            rtt[a][b] = p.ms;
            rtt[b][a] = p.ms;
        }
        if let Some((i, j)) = (0..n).flat_map(|i| (0..n).map(move |j| (i, j))).find(|&(i, j)| rtt[i][j].is_nan()) {
            return Err(format!("no RTT for {} - {}", file.regions[i].name, file.regions[j].name));
        }
        Ok(Regions { source: file.source, date: file.date, list: file.regions, rtt })
    }

    /// The same regions with every delay zero: the single-region baseline.
    pub fn without_delay(&self) -> Regions {
        let n = self.len();
        Regions { rtt: vec![vec![0.0; n]; n], ..self.clone() }
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Region names, in order.
    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|r| r.name.clone()).collect()
    }

    /// Index of a region by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|r| r.name == name)
    }

    /// Round-trip time between regions `a` and `b`, in ms.
    pub fn rtt_ms(&self, a: usize, b: usize) -> f64 {
        self.rtt[a][b]
    }

    /// One-way delay from `a` to `b`: half the RTT.
    pub fn one_way(&self, a: usize, b: usize) -> Duration {
        Duration::from_secs_f64(self.rtt[a][b] / 2000.0)
    }

    /// The other regions of `a`, nearest first.
    pub fn by_distance(&self, a: usize) -> Vec<usize> {
        let mut others: Vec<usize> = (0..self.len()).filter(|&b| b != a).collect();
        others.sort_by(|&x, &y| self.rtt[a][x].total_cmp(&self.rtt[a][y]));
        others
    }

    /// The loopback address standing for region `i` in the simulation: 127.0.1.(i + 1).
    pub fn sim_ip(i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, (i + 1) as u8))
    }

    /// The region a simulated address stands for, if any.
    pub fn region_of_ip(&self, ip: IpAddr) -> Option<usize> {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                ((a, b, c) == (127, 0, 1) && d >= 1 && (d as usize) <= self.len()).then(|| d as usize - 1)
            }
            IpAddr::V6(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(pairs: &[(&str, &str, f64)]) -> File {
        File {
            source: "test".into(),
            date: "now".into(),
            intra_region_rtt_ms: 1.0,
            regions: ["x", "y", "z"]
                .iter()
                .map(|n| Region { name: n.to_string(), place: String::new(), zone: String::new() })
                .collect(),
            rtt_ms: pairs.iter().map(|&(a, b, ms)| Pair { a: a.into(), b: b.into(), ms }).collect(),
        }
    }

    #[test]
    fn the_committed_matrix_is_complete_and_symmetric() {
        let r = Regions::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("regions.json")).unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(r.rtt_ms(0, 1), 66.0);
        for a in 0..5 {
            for b in 0..5 {
                assert_eq!(r.rtt_ms(a, b), r.rtt_ms(b, a));
            }
        }
        assert_eq!(r.one_way(1, 2), Duration::from_millis(73));
    }

    #[test]
    fn a_missing_or_duplicate_pair_is_refused() {
        assert!(Regions::from_file(file(&[("x", "y", 10.0), ("x", "z", 20.0)])).unwrap_err().contains("no RTT"));
        let dup = file(&[("x", "y", 10.0), ("y", "x", 10.0), ("x", "z", 1.0), ("y", "z", 1.0)]);
        assert!(Regions::from_file(dup).unwrap_err().contains("duplicate"));
        let bad = file(&[("x", "y", -1.0), ("x", "z", 1.0), ("y", "z", 1.0)]);
        assert!(Regions::from_file(bad).is_err());
        let unknown = file(&[("x", "w", 1.0)]);
        assert!(Regions::from_file(unknown).unwrap_err().contains("unknown"));
    }

    #[test]
    fn nearest_first_and_addresses() {
        let r = Regions::from_file(file(&[("x", "y", 50.0), ("x", "z", 20.0), ("y", "z", 30.0)])).unwrap();
        assert_eq!(r.by_distance(0), vec![2, 1]);
        assert_eq!(Regions::sim_ip(2).to_string(), "127.0.1.3");
        assert_eq!(r.region_of_ip(Regions::sim_ip(2)), Some(2));
        assert_eq!(r.region_of_ip("127.0.0.1".parse().unwrap()), None);
    }
}
