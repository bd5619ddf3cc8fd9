//! Collective pricing: ring algorithms over the links of the mesh axis's level (alpha-beta model).
//!
//! `bytes` is always the local buffer one rank holds *before* the collective. For `n` ranks:
//! - all_reduce moves `2(n-1)/n` of the buffer per rank in `2(n-1)` steps (reduce-scatter + all-gather);
//! - reduce_scatter moves `(n-1)/n` of its input in `n-1` steps;
//! - all_gather moves `(n-1)` times its input (`(n-1)/n` of its output) in `n-1` steps;
//! - all_to_all moves `(n-1)/n` of the buffer in `n-1` steps (pairwise exchange);
//! - send/recv moves the buffer once.
//!
//! One rank (`n = 1`) costs nothing.

use super::Cluster;
use moe_ir::Level;

/// The collective algorithms priced here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    AllReduce,
    ReduceScatter,
    AllGather,
    AllToAll,
    SendRecv,
}

/// Seconds a collective of `kind` over `n` ranks on links of `level` takes, `bytes` held per rank.
pub fn time(c: &Cluster, kind: Kind, n: u64, level: Level, bytes: u64) -> f64 {
    if n <= 1 && kind != Kind::SendRecv {
        return 0.0;
    }
    let (bw, lat) = c.link(level);
    let b = bytes as f64;
    let nf = n as f64;
    let (moved, steps) = match kind {
        Kind::AllReduce => (2.0 * (nf - 1.0) / nf * b, 2.0 * (nf - 1.0)),
        Kind::ReduceScatter | Kind::AllToAll => ((nf - 1.0) / nf * b, nf - 1.0),
        Kind::AllGather => ((nf - 1.0) * b, nf - 1.0),
        Kind::SendRecv => (b, 1.0),
    };
    moved / bw + steps * lat
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_reduce_is_reduce_scatter_plus_all_gather() {
        let c = Cluster::default();
        let bytes = 1 << 27;
        let n = 8;
        let ar = time(&c, Kind::AllReduce, n, Level::IntraNode, bytes);
        let rs = time(&c, Kind::ReduceScatter, n, Level::IntraNode, bytes);
        let ag = time(&c, Kind::AllGather, n, Level::IntraNode, bytes / n);
        assert!((ar - (rs + ag)).abs() < 1e-12, "{ar} vs {rs} + {ag}");
    }

    #[test]
    fn matches_the_measured_nvlink_all_reduce() {
        // FACTS.md: 134 MB bf16 all-reduce on 4 H200s through burn took 0.69 ms (290 GB/s bus bandwidth).
        let t = time(
            &Cluster::default(),
            Kind::AllReduce,
            4,
            Level::IntraNode,
            134_217_728,
        );
        assert!((0.65e-3..0.75e-3).contains(&t), "{t}");
    }

    #[test]
    fn network_is_slower_than_nvlink_and_one_rank_is_free() {
        let c = Cluster::default();
        let intra = time(&c, Kind::AllToAll, 8, Level::IntraNode, 1 << 26);
        let inter = time(&c, Kind::AllToAll, 8, Level::InterNode, 1 << 26);
        assert!(inter > 5.0 * intra);
        assert_eq!(time(&c, Kind::AllReduce, 1, Level::IntraNode, 1 << 26), 0.0);
    }
}
