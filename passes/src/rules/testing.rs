//! Test support for rule-level tests in egg's `test_fn!` style: a start term, rules, a goal term,
//! checked equal after running the rules. Terms with leaves (whose types a pattern cannot spell)
//! are built with [`Term`], and [`rule_test!`] declares a test.

#![allow(clippy::unwrap_used)]

use crate::analysis::Types;
use crate::lang::MoeLang;
use egg::{EGraph, Explanation, FlatTerm, Id, RecExpr, Rewrite, Runner};
use moe_ir::{Mesh, Op, TensorType};

/// A term under construction (its last node is its root).
#[derive(Debug, Default)]
pub(crate) struct Term {
    pub expr: RecExpr<MoeLang>,
}

impl Term {
    /// A graph input named `name`.
    pub fn input(&mut self, name: &str, ty: TensorType) -> Id {
        self.leaf(Op::Input(ty), name)
    }

    /// A weight named `name`.
    pub fn weight(&mut self, name: &str, ty: TensorType) -> Id {
        self.leaf(Op::Weight(ty), name)
    }

    /// A leaf op named `name`.
    pub fn leaf(&mut self, op: Op, name: &str) -> Id {
        self.expr.add(MoeLang::Op {
            op,
            leaf: Some(name.to_string()),
            children: vec![],
        })
    }

    /// An op applied to `children`.
    pub fn op(&mut self, op: Op, children: &[Id]) -> Id {
        self.expr.add(MoeLang::Op {
            op,
            leaf: None,
            children: children.to_vec(),
        })
    }

    /// Output `index` of a multi-output op.
    pub fn get(&mut self, index: u32, child: Id) -> Id {
        self.expr.add(MoeLang::Get {
            index,
            child: [child],
        })
    }

    /// Builds a term with `f`, which returns its root (the last node added).
    pub fn build(f: impl FnOnce(&mut Term) -> Id) -> RecExpr<MoeLang> {
        let mut t = Term::default();
        let root = f(&mut t);
        assert_eq!(
            usize::from(root) + 1,
            t.expr.as_ref().len(),
            "a term's root must be its last node"
        );
        t.expr
    }
}

/// The mesh of a spec such as `"dp=2,tp=4"` (8 GPUs per node).
pub(crate) fn mesh(spec: &str) -> Mesh {
    Mesh::parse(spec, 8).unwrap()
}

/// A runner over `egraph` with explicit limits.
pub(crate) fn runner(mesh: &Mesh, egraph: EGraph<MoeLang, Types>) -> Runner<MoeLang, Types, ()> {
    Runner::new(Types { mesh: mesh.clone() })
        .with_egraph(egraph)
        .with_iter_limit(16)
        .with_node_limit(20_000)
}

/// Runs `rules` from `start` (on an e-graph with explanations) and checks that `goal` is in the
/// e-graph, in `start`'s class, and that the explanation of the equality names every rule of
/// `explains`.
pub(crate) fn check_rewrites(
    rules: &[Rewrite<MoeLang, Types>],
    mesh_spec: &str,
    start: &RecExpr<MoeLang>,
    goal: &RecExpr<MoeLang>,
    explains: &[&str],
) {
    let mesh = mesh(mesh_spec);
    let mut egraph = EGraph::new(Types { mesh: mesh.clone() }).with_explanations_enabled();
    let s = egraph.add_expr(start);
    egraph.rebuild();
    assert!(
        egraph.lookup_expr(goal).map(|g| egraph.find(g)) != Some(egraph.find(s)),
        "start and goal are equal before any rule ran"
    );
    let mut runner = runner(&mesh, egraph).run(rules);
    let g = runner.egraph.lookup_expr(goal).unwrap_or_else(|| {
        panic!(
            "goal {goal} is not in the e-graph: {:?}",
            runner.stop_reason
        )
    });
    assert_eq!(
        runner.egraph.find(s),
        runner.egraph.find(g),
        "start {start} and goal {goal} are not equal"
    );
    let why = explained_rules(&mut runner.explain_equivalence(start, goal));
    for name in explains {
        assert!(
            why.iter().any(|r| r == name),
            "the explanation does not name {name}: {why:?}"
        );
    }
}

/// The rule names an explanation's flat steps cite, in order.
pub(crate) fn explained_rules(e: &mut Explanation<MoeLang>) -> Vec<String> {
    fn walk(t: &FlatTerm<MoeLang>, out: &mut Vec<String>) {
        for r in [t.forward_rule, t.backward_rule].into_iter().flatten() {
            out.push(r.to_string());
        }
        for c in &t.children {
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    for t in e.make_flat_explanation() {
        if std::env::var_os("MOE_SHOW").is_some() {
            println!("{}", sexp(t));
        }
        walk(t, &mut out);
    }
    out
}

fn sexp(t: &FlatTerm<MoeLang>) -> String {
    let mut s = String::new();
    if let Some(r) = t.forward_rule {
        s += &format!("(Rewrite=> {r} ");
    }
    if let Some(r) = t.backward_rule {
        s += &format!("(Rewrite<= {r} ");
    }
    s += &format!("({}", t.node);
    for c in &t.children {
        s += " ";
        s += &sexp(c);
    }
    s += ")";
    if t.forward_rule.is_some() || t.backward_rule.is_some() {
        s += ")";
    }
    s
}

/// Runs `rules` from `start` and checks that nothing was added or unioned.
pub(crate) fn check_unchanged(
    rules: &[Rewrite<MoeLang, Types>],
    mesh_spec: &str,
    start: &RecExpr<MoeLang>,
) {
    let mesh = mesh(mesh_spec);
    let mut egraph = EGraph::new(Types { mesh: mesh.clone() }).with_explanations_enabled();
    egraph.add_expr(start);
    egraph.rebuild();
    let (classes, nodes) = (egraph.number_of_classes(), egraph.total_number_of_nodes());
    let runner = runner(&mesh, egraph).run(rules);
    assert_eq!(
        runner.egraph.number_of_classes(),
        classes,
        "a class was added or merged"
    );
    assert_eq!(
        runner.egraph.total_number_of_nodes(),
        nodes,
        "a node was added"
    );
}

/// The rewrites of the rules named `names` (from [`crate::rules::RULES`]) on `mesh_spec`.
pub(crate) fn named(names: &[&str], mesh_spec: &str) -> Vec<Rewrite<MoeLang, Types>> {
    let mesh = mesh(mesh_spec);
    names
        .iter()
        .map(|n| {
            crate::rules::named(n)
                .unwrap_or_else(|| panic!("no rule named {n}"))
                .rewrite(&mesh, 3)
        })
        .collect()
}

/// A rule-level test in egg's `test_fn!` style:
/// ```text
/// rule_test! { name, rules: ["rule-name", ..], mesh: "dp=2,tp=4", start: |b| .., goal: |b| .. }
/// rule_test! { name, rules: ["rule-name", ..], mesh: "dp=2,tp=4", start: |b| .., unchanged }
/// ```
/// The first form checks that `goal` ends in `start`'s class and that the explanation names every
/// rule given; the second that the rules (and then all rules) add and union nothing.
macro_rules! rule_test {
    ($name:ident, rules: [$($rule:expr),* $(,)?], mesh: $mesh:expr,
     start: $start:expr, goal: $goal:expr $(,)?) => {
        #[test]
        fn $name() {
            let names = [$($rule),*];
            $crate::rules::testing::check_rewrites(
                &$crate::rules::testing::named(&names, $mesh),
                $mesh,
                &$crate::rules::testing::Term::build($start),
                &$crate::rules::testing::Term::build($goal),
                &names,
            );
        }
    };
    ($name:ident, rules: [$($rule:expr),* $(,)?], mesh: $mesh:expr,
     start: $start:expr, unchanged $(,)?) => {
        #[test]
        fn $name() {
            let start = $crate::rules::testing::Term::build($start);
            $crate::rules::testing::check_unchanged(
                &$crate::rules::testing::named(&[$($rule),*], $mesh),
                $mesh,
                &start,
            );
            $crate::rules::testing::check_unchanged(
                &$crate::rules::all(&$crate::rules::testing::mesh($mesh), 3),
                $mesh,
                &start,
            );
        }
    };
}
pub(crate) use rule_test;

/// A small Mixtral (2 layers, hidden 64, 16-token sequences) imported on `mesh`, with extra
/// `key=value` overrides.
pub(crate) fn small(mesh: &str, extra: &[&str]) -> moe_ir::Graph {
    let mut sets: Vec<String> = [
        "num_hidden_layers=2",
        "hidden_size=64",
        "intermediate_size=96",
        "num_attention_heads=4",
        "num_key_value_heads=2",
        "vocab_size=128",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.extend(extra.iter().map(|s| s.to_string()));
    let opts = moe_ir::hf::ImportOptions {
        mesh: Some(moe_ir::Mesh::parse(mesh, 8).unwrap()),
        seq: 16,
        ..Default::default()
    };
    moe_ir::hf::import(
        include_str!("../../../examples/hf/mixtral-8x7b.json"),
        &sets,
        &opts,
    )
    .unwrap()
}
