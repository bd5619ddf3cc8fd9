//! The PPMoE dispatch rule: over tokens **replicated** on the axis the experts are split on, the
//! all-to-all pair around the experts becomes index slicing and one all-reduce.
//!
//! After the mesh remap a MoE layer whose tokens every rank of `ax` holds alike reads
//! ```text
//! all_gather[ax,0](combine(all_to_all[ax,1,0](expert_ffn(padded)(
//!     all_to_all[ax,0,1](dispatch(shard[ax,0](x), shard[ax,0](idx))), W...)),
//!   shard[ax,0](idx), shard[ax,0](w)))
//!   == all_reduce[ax](index_add{scaled}(zeros partial(ax), t,
//!        expert_ffn(grouped)(index_select(x, t), counts, W...), s))
//!      where (t, s, counts) = local_routes[ax](idx, w)
//! ```
//! Why equal: every rank holds all the tokens of its `ax` group and the same routes (the router ran
//! on every rank). `local_routes` lists the (token, choice) pairs routed to the rank's own experts,
//! keeping per token block (the block each rank dispatched) the pairs `dispatch` kept: same
//! capacity, same choice-major priority. So each rank runs its experts on the same rows as before,
//! with the same weights; scaling each row by its routing weight and adding it at its token into a
//! zero buffer gives the rank's share of `combine`'s output over **all** the tokens, and the
//! `all_reduce` sums the shares: `combine`'s output, gathered on every rank.

use super::chain::{find_chains, index_slicing, instantiate, op_nodes, Chain};
use super::{add_op, matched};
use crate::analysis::Types;
use crate::lang::MoeLang;
use egg::{Applier, EGraph, Id, PatternAst, SearchMatches, Searcher, Subst, Symbol, Var};
use moe_ir::Op;

/// A matched replicated-token layer: the chain under the `all_gather`, and the replicated values
/// its `shard`s cut.
#[derive(Debug, Clone)]
struct Match {
    chain: Chain,
    x: Id,
    idx: Id,
    w: Id,
}

/// The `x` of a `shard[axis,0](x)` in `class`.
fn unshard(egraph: &EGraph<MoeLang, Types>, class: Id, axis: &str) -> Option<Id> {
    op_nodes(egraph, class).find_map(|(op, ch)| match (op, ch) {
        (Op::Shard { axis: a, dim: 0 }, [x]) if a == axis => Some(*x),
        _ => None,
    })
}

/// Every `all_gather[ax,0](chain)` in `class` whose tokens, indices and weights are `shard[ax,0]`
/// of replicated values.
fn find_matches(egraph: &EGraph<MoeLang, Types>, class: Id) -> Vec<Match> {
    let mut found = Vec::new();
    for (op, ch) in op_nodes(egraph, class) {
        let (Op::AllGather { axis, dim: 0 }, [inner]) = (op, ch) else {
            continue;
        };
        for chain in find_chains(egraph, *inner) {
            if &chain.axis != axis {
                continue;
            }
            let x = unshard(egraph, chain.x, axis);
            let idx = unshard(egraph, chain.idx, axis);
            let w = unshard(egraph, chain.w, axis);
            if let (Some(x), Some(idx), Some(w)) = (x, idx, w) {
                found.push(Match { chain, x, idx, w });
            }
        }
    }
    found
}

/// The PPMoE form (index slicing + one all-reduce) of a MoE layer over replicated tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct PpmoeSlicing;

impl PpmoeSlicing {
    /// The rule's name, as users read it in explanations.
    pub const NAME: &'static str = "dispatch-a2a-to-ppmoe-slicing";
}

impl Searcher<MoeLang, Types> for PpmoeSlicing {
    fn search_eclass_with_limit(
        &self,
        egraph: &EGraph<MoeLang, Types>,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, MoeLang>> {
        super::class_match(eclass, limit, || !find_matches(egraph, eclass).is_empty())
    }

    fn vars(&self) -> Vec<Var> {
        Vec::new()
    }
}

impl Applier<MoeLang, Types> for PpmoeSlicing {
    fn apply_one(
        &self,
        egraph: &mut EGraph<MoeLang, Types>,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&PatternAst<MoeLang>>,
        rule_name: Symbol,
    ) -> Vec<Id> {
        let mut changed = Vec::new();
        for m in find_matches(egraph, eclass) {
            let Some(out) = build(egraph, &m) else {
                continue;
            };
            if egraph[out].data != egraph[eclass].data {
                continue;
            }
            let from = instantiate_match(egraph, &m);
            if egraph.union_trusted(from, out, rule_name) {
                changed.push(egraph.find(eclass));
            }
        }
        changed
    }
}

/// The matched term `all_gather(chain)` over `shard(x)`, `shard(idx)`, `shard(w)`.
fn instantiate_match(egraph: &mut EGraph<MoeLang, Types>, m: &Match) -> Id {
    let axis = m.chain.axis.clone();
    let shard = Op::Shard {
        axis: axis.clone(),
        dim: 0,
    };
    let x = matched(egraph, shard.clone(), vec![m.x]);
    let idx = matched(egraph, shard.clone(), vec![m.idx]);
    let w = matched(egraph, shard, vec![m.w]);
    let y = instantiate(egraph, &m.chain, x, idx, w);
    matched(egraph, Op::AllGather { axis, dim: 0 }, vec![y])
}

fn build(egraph: &mut EGraph<MoeLang, Types>, m: &Match) -> Option<Id> {
    let c = &m.chain;
    // The tokens each rank dispatched: the local rows of `shard(x)`.
    let x_ty = egraph[c.x].data.first()?.clone();
    let shard_rows = *x_ty.local_shape(&egraph.analysis.mesh).first()?;
    let y = index_slicing(egraph, c, m.x, m.idx, m.w, shard_rows)?;
    add_op(
        egraph,
        Op::AllReduce {
            axis: c.axis.clone(),
        },
        vec![y],
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::convert::{load, Loaded};
    use crate::rules::chain::zeros_leaf;
    use crate::rules::testing::{explained_rules, mesh, runner, Term};
    use crate::rules::{
        rewrite, AllGatherSlicing, ALL_GATHER_OF_REDUCE_SCATTER, ALL_GATHER_OF_SHARD,
    };
    use egg::{CostFunction, Extractor, Language, RecExpr, Rewrite, Runner};
    use moe_ir::{Activation, Capacity, DType, FfnLayout, Graph, Scope, TensorType, Value};

    const T: u64 = 32;
    const H: u64 = 16;
    const F: u64 = 24;
    const E: u64 = 8;
    const K: u64 = 2;

    fn x_ty() -> TensorType {
        TensorType::new(DType::Bf16, [T, H])
    }
    fn idx_ty() -> TensorType {
        TensorType::new(DType::I32, [T, K])
    }
    fn w_ty() -> TensorType {
        TensorType::new(DType::F32, [T, K])
    }
    fn up_ty() -> TensorType {
        TensorType::new(DType::Bf16, [E, H, F]).with_split(0, &["tp"])
    }
    fn down_ty() -> TensorType {
        TensorType::new(DType::Bf16, [E, F, H]).with_split(0, &["tp"])
    }
    fn ffn(layout: FfnLayout) -> Op {
        Op::ExpertFfn {
            layout,
            act: Activation::Silu,
            gated: false,
            bias: false,
        }
    }
    fn shard0() -> Op {
        Op::Shard {
            axis: "tp".into(),
            dim: 0,
        }
    }

    /// The replicated-token a2a form on mesh `tp=4` (8 experts, top-2, H=16, 32 tokens), with
    /// `capacity` slots per expert per rank (8 tokens per rank: 8 or more is dropless).
    fn replicated_a2a_layer(capacity: u64) -> Graph {
        let mut g = Graph::new("ppmoe", mesh("tp=4"));
        let l = Scope::Layer(0);
        let add = |g: &mut Graph, name: &str, op: Op, ins: &[Value]| -> Value {
            g.add(name, op, ins, l).unwrap().into()
        };
        let x = add(&mut g, "x", Op::Input(x_ty()), &[]);
        let idx = add(&mut g, "idx", Op::Input(idx_ty()), &[]);
        let w = add(&mut g, "w", Op::Input(w_ty()), &[]);
        let up = add(&mut g, "w_up", Op::Weight(up_ty()), &[]);
        let down = add(&mut g, "w_down", Op::Weight(down_ty()), &[]);
        let xs = add(&mut g, "xs", shard0(), &[x]);
        let is = add(&mut g, "is", shard0(), &[idx]);
        let ws = add(&mut g, "ws", shard0(), &[w]);
        let (experts, a2a) = (E, |s, c| Op::AllToAll {
            axis: "tp".into(),
            split_dim: s,
            concat_dim: c,
        });
        let d = add(&mut g, "d", Op::Dispatch { experts, capacity }, &[xs, is]);
        let a = add(&mut g, "a", a2a(0, 1), &[d]);
        let h = add(&mut g, "h", ffn(FfnLayout::Padded), &[a, up, down]);
        let b = add(&mut g, "b", a2a(1, 0), &[h]);
        let y = add(&mut g, "y", Op::Combine { experts, capacity }, &[b, is, ws]);
        let out = add(
            &mut g,
            "out",
            Op::AllGather {
                axis: "tp".into(),
                dim: 0,
            },
            &[y],
        );
        g.add_output("y", out);
        moe_ir::validate(&g).unwrap();
        g
    }

    /// The PPMoE term the layer should become; with `gathered`, the tokens, indices and weights
    /// are spelled `all_gather(shard(v))` (the all-gather-slicing route before the algebra).
    fn ppmoe_term(capacity: Capacity, token_groups: u64, gathered: bool) -> RecExpr<MoeLang> {
        Term::build(|b| {
            let leaf = |b: &mut Term, name: &str, ty: TensorType| {
                let v = b.input(name, ty);
                if gathered {
                    let s = b.op(shard0(), &[v]);
                    b.op(
                        Op::AllGather {
                            axis: "tp".into(),
                            dim: 0,
                        },
                        &[s],
                    )
                } else {
                    v
                }
            };
            let x = leaf(b, "x", x_ty());
            let idx = leaf(b, "idx", idx_ty());
            let w = leaf(b, "w", w_ty());
            let up = b.weight("w_up", up_ty());
            let down = b.weight("w_down", down_ty());
            let lr = b.op(
                Op::LocalRoutes {
                    experts: E,
                    axis: "tp".into(),
                    capacity,
                    token_groups,
                },
                &[idx, w],
            );
            let (t, s, counts) = (b.get(0, lr), b.get(1, lr), b.get(2, lr));
            let xs = b.op(Op::IndexSelect, &[x, t]);
            let hs = b.op(ffn(FfnLayout::Grouped), &[xs, counts, up, down]);
            let zeros_ty = x_ty().with_partial(&["tp"]).canonical(&mesh("tp=4"));
            let zeros = b.expr.add(zeros_leaf(zeros_ty));
            let y = b.op(Op::IndexAdd { scaled: true }, &[zeros, t, hs, s]);
            b.op(Op::AllReduce { axis: "tp".into() }, &[y])
        })
    }

    /// Loads `g`, runs `rules`, and returns the loaded e-graph (after the run), the class and the
    /// original term of the graph's output.
    fn run(g: &Graph, rules: &[Rewrite<MoeLang, Types>]) -> (Loaded, Id, RecExpr<MoeLang>) {
        let mut l = load(g);
        let out = match l.egraph[l.root].nodes.as_slice() {
            [MoeLang::Root(c)] => c[0],
            other => panic!("unexpected root {other:?}"),
        };
        let start = l.egraph.id_to_expr(out);
        let egraph = std::mem::replace(
            &mut l.egraph,
            egg::EGraph::new(Types {
                mesh: g.mesh.clone(),
            }),
        );
        let r: Runner<MoeLang, Types, ()> = runner(&g.mesh, egraph).run(rules);
        assert!(
            matches!(r.stop_reason, Some(egg::StopReason::Saturated)),
            "{:?}",
            r.stop_reason
        );
        l.egraph = r.egraph;
        (l, out, start)
    }

    fn explain(l: &mut Loaded, start: &RecExpr<MoeLang>, goal: &RecExpr<MoeLang>) -> Vec<String> {
        explained_rules(&mut l.egraph.explain_equivalence(start, goal))
    }

    /// Prices the all-to-all and all-gather forms out, so extraction shows the PPMoE form.
    struct CommunicationIsDear;
    impl CostFunction<MoeLang> for CommunicationIsDear {
        type Cost = u64;
        fn cost<C: FnMut(Id) -> u64>(&mut self, enode: &MoeLang, mut costs: C) -> u64 {
            let own = match enode {
                MoeLang::Op {
                    op: Op::AllToAll { .. } | Op::AllGather { .. },
                    ..
                } => 1_000_000,
                _ => 1,
            };
            enode.fold(own, |sum, id| sum.saturating_add(costs(id)))
        }
    }

    fn extract(l: &Loaded) -> Graph {
        let (_, expr) = Extractor::new(&l.egraph, CommunicationIsDear).find_best(l.root);
        l.to_graph(&expr)
    }

    #[test]
    fn ppmoe_rule_rewrites_a_replicated_token_layer() {
        let g = replicated_a2a_layer(8);
        let rules = [rewrite(PpmoeSlicing::NAME, PpmoeSlicing).unwrap()];
        let (mut l, out, start) = run(&g, &rules);
        let goal = ppmoe_term(Capacity::Dropless, 1, false);
        let found = l
            .egraph
            .lookup_expr(&goal)
            .expect("the PPMoE term was built");
        assert_eq!(l.egraph.find(found), l.egraph.find(out));
        assert_eq!(explain(&mut l, &start, &goal), [PpmoeSlicing::NAME]);
    }

    #[test]
    fn all_rules_make_the_ppmoe_form_cheapest_without_communication_but_one_all_reduce() {
        let g = replicated_a2a_layer(8);
        let (l, out, _) = run(&g, &crate::rules::all(&g.mesh, 3));
        // (a) the PPMoE term is in the output's class.
        let found = l
            .egraph
            .lookup_expr(&ppmoe_term(Capacity::Dropless, 1, false));
        assert_eq!(found.map(|f| l.egraph.find(f)), Some(l.egraph.find(out)));
        // (b) extraction pricing all_to_all and all_gather high gives it back as a valid graph.
        let rewritten = extract(&l);
        moe_ir::validate(&rewritten).unwrap();
        let s = moe_ir::Summary::of(&rewritten);
        assert_eq!(s.collectives.all_to_all, 0);
        assert_eq!(s.collectives.all_gather, 0);
        assert_eq!(s.collectives.reduce_scatter, 0);
        assert_eq!(s.collectives.all_reduce, 1);
        assert_eq!(s.ops.get("local_routes"), Some(&1));
        assert_eq!(
            s.ops.get("shard"),
            None,
            "no shard left: every rank uses its whole copy"
        );
        assert_eq!(s.params, moe_ir::Summary::of(&g).params, "the same weights");
        let text = moe_ir::print::to_text(&rewritten);
        assert!(text.contains("capacity=dropless, token_groups=1"), "{text}");
    }

    #[test]
    fn capacity_below_the_rows_a_rank_dispatched_keeps_slots_per_source_rank() {
        // 8 tokens per rank, 3 slots per expert: dispatch drops; local_routes keeps 3 per expert
        // in each of the 4 token blocks (one per rank that dispatched).
        let g = replicated_a2a_layer(3);
        let (l, out, _) = run(&g, &crate::rules::all(&g.mesh, 3));
        let found = l
            .egraph
            .lookup_expr(&ppmoe_term(Capacity::Slots(3), 4, false));
        assert_eq!(found.map(|f| l.egraph.find(f)), Some(l.egraph.find(out)));
        let rewritten = extract(&l);
        moe_ir::validate(&rewritten).unwrap();
        let text = moe_ir::print::to_text(&rewritten);
        assert!(
            text.contains("capacity={slots=3}, token_groups=4"),
            "{text}"
        );
        assert_eq!(moe_ir::Summary::of(&rewritten).collectives.all_reduce, 1);
    }

    #[test]
    fn the_all_gather_slicing_route_meets_the_ppmoe_rule_in_one_e_node() {
        let g = replicated_a2a_layer(3);
        let goal = ppmoe_term(Capacity::Slots(3), 4, false);
        // Route 1: all-gather slicing on the inner combine, then the algebra.
        let route = [
            rewrite(AllGatherSlicing::NAME, AllGatherSlicing).unwrap(),
            ALL_GATHER_OF_SHARD.rewrite(&g.mesh, 3).unwrap(),
            ALL_GATHER_OF_REDUCE_SCATTER.rewrite(&g.mesh, 3).unwrap(),
        ];
        let (mut l, out, start) = run(&g, &route);
        let found = l
            .egraph
            .lookup_expr(&goal)
            .expect("route 1 reaches the PPMoE term");
        assert_eq!(l.egraph.find(found), l.egraph.find(out));
        let why = explain(&mut l, &start, &goal);
        for name in [
            AllGatherSlicing::NAME,
            ALL_GATHER_OF_SHARD.name,
            ALL_GATHER_OF_REDUCE_SCATTER.name,
        ] {
            assert!(why.iter().any(|r| r == name), "{name} missing from {why:?}");
        }
        assert!(!why.iter().any(|r| r == PpmoeSlicing::NAME), "{why:?}");
        // Both routes: they build the same nodes, hash-consed into one all_reduce e-node.
        let (l, out, _) = run(&g, &crate::rules::all(&g.mesh, 3));
        for gathered in [false, true] {
            let found = l
                .egraph
                .lookup_expr(&ppmoe_term(Capacity::Slots(3), 4, gathered))
                .expect("both spellings are in the e-graph");
            assert_eq!(l.egraph.find(found), l.egraph.find(out));
        }
        let all_reduces = l.egraph[out]
            .nodes
            .iter()
            .filter(|n| {
                matches!(
                    n,
                    MoeLang::Op {
                        op: Op::AllReduce { .. },
                        ..
                    }
                )
            })
            .count();
        assert_eq!(all_reduces, 1, "{:?}", l.egraph[out].nodes);
    }

    #[test]
    fn tokens_split_on_the_axis_are_not_ppmoe() {
        // The same layer with tokens that arrive split on tp (no shard of a replicated value):
        // the PPMoE rule does not fire.
        let mut g = Graph::new("ep", mesh("tp=4"));
        let l = Scope::Layer(0);
        let add = |g: &mut Graph, name: &str, op: Op, ins: &[Value]| -> Value {
            g.add(name, op, ins, l).unwrap().into()
        };
        let xs = add(&mut g, "xs", Op::Input(x_ty().with_split(0, &["tp"])), &[]);
        let is = add(
            &mut g,
            "is",
            Op::Input(idx_ty().with_split(0, &["tp"])),
            &[],
        );
        let ws = add(&mut g, "ws", Op::Input(w_ty().with_split(0, &["tp"])), &[]);
        let up = add(&mut g, "w_up", Op::Weight(up_ty()), &[]);
        let down = add(&mut g, "w_down", Op::Weight(down_ty()), &[]);
        let (experts, capacity) = (E, 8);
        let a2a = |s, c| Op::AllToAll {
            axis: "tp".into(),
            split_dim: s,
            concat_dim: c,
        };
        let d = add(&mut g, "d", Op::Dispatch { experts, capacity }, &[xs, is]);
        let a = add(&mut g, "a", a2a(0, 1), &[d]);
        let h = add(&mut g, "h", ffn(FfnLayout::Padded), &[a, up, down]);
        let b = add(&mut g, "b", a2a(1, 0), &[h]);
        let y = add(&mut g, "y", Op::Combine { experts, capacity }, &[b, is, ws]);
        let ag = Op::AllGather {
            axis: "tp".into(),
            dim: 0,
        };
        let out = add(&mut g, "out", ag, &[y]);
        g.add_output("y", out);
        let before = load(&g).egraph.total_number_of_nodes();
        let rules = [rewrite(PpmoeSlicing::NAME, PpmoeSlicing).unwrap()];
        let (l, _, _) = run(&g, &rules);
        assert_eq!(l.egraph.total_number_of_nodes(), before);
    }
}
