//! Rules written as their equation: an egg pattern pair whose op attributes may name template
//! variables, `$ax` (any axis of the mesh) and `$d`, `$s`, `$c` (any dim below the graph's
//! rank). For one mesh the templates are instantiated into plain `egg::Pattern`s, which egg's
//! pattern machine matches; the right side is added only where it type-checks, and the union is
//! made from the matched left term so that explanations cite the rule on it.
//!
//! ```text
//! "(shard{axis=$ax,dim=$d} (all_reduce{axis=$ax} ?p))" => "(reduce_scatter{axis=$ax,dim=$d} ?p)"
//! ```

use super::add_checked;
use crate::analysis::Types;
use crate::lang::MoeLang;
use egg::{
    Applier, EGraph, ENodeOrVar, Id, Language, Pattern, PatternAst, Rewrite, SearchMatches,
    Searcher, Subst, Symbol, Var,
};
use moe_ir::Mesh;
use std::collections::HashSet;
use thiserror::Error;

/// A rule as its equation `lhs => rhs` (see the module docs for the template variables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Equation {
    /// The name users read in explanations.
    pub name: &'static str,
    pub lhs: &'static str,
    pub rhs: &'static str,
}

/// An equation that does not make a rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EquationError {
    #[error("rule `{rule}`: pattern `{pattern}` does not parse: {detail}")]
    Pattern {
        rule: &'static str,
        pattern: String,
        detail: String,
    },
    #[error("rule `{rule}`: the right side uses `{var}`, which the left side does not bind")]
    Unbound { rule: &'static str, var: String },
}

/// Template variables and what they range over.
const AXIS_VARS: [&str; 1] = ["$ax"];
const DIM_VARS: [&str; 3] = ["$d", "$s", "$c"];

impl Equation {
    /// The rewrite of this equation on `mesh`, for values of rank at most `rank`.
    pub fn rewrite(
        &self,
        mesh: &Mesh,
        rank: usize,
    ) -> Result<Rewrite<MoeLang, Types>, EquationError> {
        let inst = self.instantiate(mesh, rank)?;
        // `Rewrite::new` refuses only an applier whose variables the searcher does not bind;
        // `Instances` declares none (it checks its own pairs in `instantiate`).
        Rewrite::new(self.name, inst.clone(), inst).map_err(|e| EquationError::Pattern {
            rule: self.name,
            pattern: self.lhs.to_string(),
            detail: e,
        })
    }

    /// One pattern pair per binding of the template variables.
    pub fn instantiate(&self, mesh: &Mesh, rank: usize) -> Result<Instances, EquationError> {
        let axes: Vec<String> = mesh.axes.iter().map(|a| a.name.clone()).collect();
        let dims: Vec<String> = (0..rank).map(|d| d.to_string()).collect();
        let mut bindings: Vec<Vec<(&str, &str)>> = vec![Vec::new()];
        for var in AXIS_VARS.iter().chain(&DIM_VARS) {
            if !self.lhs.contains(var) {
                continue;
            }
            let values = if AXIS_VARS.contains(var) {
                &axes
            } else {
                &dims
            };
            bindings = bindings
                .into_iter()
                .flat_map(|b| {
                    values.iter().map(move |v| {
                        let mut b = b.clone();
                        b.push((*var, v.as_str()));
                        b
                    })
                })
                .collect();
        }
        let mut pairs = Vec::with_capacity(bindings.len());
        for b in &bindings {
            let lhs = self.pattern(self.lhs, b)?;
            let rhs = self.pattern(self.rhs, b)?;
            let bound = lhs.vars();
            if let Some(v) = rhs.vars().into_iter().find(|v| !bound.contains(v)) {
                return Err(EquationError::Unbound {
                    rule: self.name,
                    var: v.to_string(),
                });
            }
            pairs.push((lhs, rhs));
        }
        Ok(Instances { pairs })
    }

    fn pattern(
        &self,
        template: &str,
        binding: &[(&str, &str)],
    ) -> Result<Pattern<MoeLang>, EquationError> {
        let mut text = template.to_string();
        for (var, value) in binding {
            text = text.replace(var, value);
        }
        if let Some(var) = AXIS_VARS
            .iter()
            .chain(&DIM_VARS)
            .find(|v| text.contains(*v))
        {
            return Err(EquationError::Unbound {
                rule: self.name,
                var: var.to_string(),
            });
        }
        text.parse()
            .map_err(|e: egg::RecExprParseError<_>| EquationError::Pattern {
                rule: self.name,
                pattern: text.clone(),
                detail: e.to_string(),
            })
    }
}

/// An equation instantiated for one mesh: its (left, right) pattern pairs.
#[derive(Debug, Clone)]
pub struct Instances {
    pairs: Vec<(Pattern<MoeLang>, Pattern<MoeLang>)>,
}

impl Instances {
    /// How many pattern pairs the templates gave.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The pair whose left side is `ast` (a match carries the pattern it came from).
    fn pair_of(&self, ast: &PatternAst<MoeLang>) -> Option<&(Pattern<MoeLang>, Pattern<MoeLang>)> {
        self.pairs
            .iter()
            .find(|(lhs, _)| std::ptr::eq(&lhs.ast, ast))
            .or_else(|| self.pairs.iter().find(|(lhs, _)| lhs.ast == *ast))
    }
}

/// Adds `ast` under `subst` bottom-up: type-checked (`None` if a node does not type) or, for a
/// term that was matched and so is known to be well-typed, as is.
fn instantiate(
    egraph: &mut EGraph<MoeLang, Types>,
    ast: &PatternAst<MoeLang>,
    subst: &Subst,
    checked: bool,
) -> Option<Id> {
    let mut ids: Vec<Id> = Vec::with_capacity(ast.as_ref().len());
    for node in ast.as_ref() {
        let id = match node {
            ENodeOrVar::Var(v) => *subst.get(*v)?,
            ENodeOrVar::ENode(n) => {
                let n = n.clone().map_children(|c| ids[usize::from(c)]);
                if checked {
                    add_checked(egraph, n)?
                } else {
                    egraph.add_uncanonical(n)
                }
            }
        };
        ids.push(id);
    }
    ids.last().copied()
}

/// Searching runs egg's pattern machine for each pair's left side; every match carries the
/// left side it came from (its `ast`), which is how the applier knows which right side to add.
impl Searcher<MoeLang, Types> for Instances {
    /// The first pair matching in `eclass` ([`Searcher::search_with_limit`] gives them all).
    fn search_eclass_with_limit(
        &self,
        egraph: &EGraph<MoeLang, Types>,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, MoeLang>> {
        self.pairs
            .iter()
            .find_map(|(lhs, _)| lhs.search_eclass_with_limit(egraph, eclass, limit))
    }

    /// Only the classes holding a left side's root op are searched, in the e-graph's class
    /// order (the order egg's default search takes); in a class, the pairs in order.
    fn search_with_limit(
        &self,
        egraph: &EGraph<MoeLang, Types>,
        mut limit: usize,
    ) -> Vec<SearchMatches<'_, MoeLang>> {
        let mut candidates = HashSet::new();
        for (lhs, _) in &self.pairs {
            if let Some(ENodeOrVar::ENode(root)) = lhs.ast.as_ref().last() {
                if let Some(ids) = egraph.classes_for_op(&root.discriminant()) {
                    candidates.extend(ids);
                }
            }
        }
        let mut found = Vec::new();
        for class in egraph.classes().filter(|c| candidates.contains(&c.id)) {
            for (lhs, _) in &self.pairs {
                if limit == 0 {
                    return found;
                }
                if let Some(m) = lhs.search_eclass_with_limit(egraph, class.id, limit) {
                    limit = limit.saturating_sub(m.substs.len());
                    found.push(m);
                }
            }
        }
        found
    }

    fn vars(&self) -> Vec<Var> {
        Vec::new()
    }
}

impl Applier<MoeLang, Types> for Instances {
    /// Applies every match with the left side it came from (egg's default passes the ast only
    /// when explanations are on).
    fn apply_matches(
        &self,
        egraph: &mut EGraph<MoeLang, Types>,
        matches: &[SearchMatches<'_, MoeLang>],
        rule_name: Symbol,
    ) -> Vec<Id> {
        let mut changed = Vec::new();
        for m in matches {
            for subst in &m.substs {
                changed.extend(self.apply_one(
                    egraph,
                    m.eclass,
                    subst,
                    m.ast.as_deref(),
                    rule_name,
                ));
            }
        }
        changed
    }

    /// Adds the right side of the pair whose left side `searcher_ast` is, if it type-checks to
    /// `eclass`'s types, and unions it with the matched left term. Nothing without the ast.
    fn apply_one(
        &self,
        egraph: &mut EGraph<MoeLang, Types>,
        eclass: Id,
        subst: &Subst,
        searcher_ast: Option<&PatternAst<MoeLang>>,
        rule_name: Symbol,
    ) -> Vec<Id> {
        let Some((lhs, rhs)) = searcher_ast.and_then(|ast| self.pair_of(ast)) else {
            return Vec::new();
        };
        let Some(out) = instantiate(egraph, &rhs.ast, subst, true) else {
            return Vec::new();
        };
        // The analysis refuses to merge classes of different types: check first.
        if egraph[out].data != egraph[eclass].data {
            return Vec::new();
        }
        let Some(from) = instantiate(egraph, &lhs.ast, subst, false) else {
            return Vec::new();
        };
        if egraph.union_trusted(from, out, rule_name) {
            vec![egraph.find(eclass)]
        } else {
            Vec::new()
        }
    }
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rules::testing::mesh;

    #[test]
    fn templates_instantiate_per_axis_and_dim() {
        let e = Equation {
            name: "t",
            lhs: "(all_to_all{axis=$ax,split_dim=$s,concat_dim=$c} (shard{axis=$ax,dim=$c} ?x))",
            rhs: "(shard{axis=$ax,dim=$s} ?x)",
        };
        assert_eq!(
            e.instantiate(&mesh("dp=2,tp=4"), 3).unwrap().len(),
            2 * 3 * 3
        );
        assert!(e
            .instantiate(&moe_ir::Mesh::single(), 3)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn bad_equations_are_errors_naming_the_rule() {
        let unbound = Equation {
            name: "u",
            lhs: "(all_reduce{axis=$ax} ?p)",
            rhs: "?q",
        };
        let e = unbound.instantiate(&mesh("tp=2"), 2).unwrap_err();
        assert_eq!(
            e,
            EquationError::Unbound {
                rule: "u",
                var: "?q".into()
            }
        );
        let template = Equation {
            name: "v",
            lhs: "(all_reduce{axis=tp} ?p)",
            rhs: "(shard{axis=tp,dim=$d} ?p)",
        };
        assert!(matches!(
            template.instantiate(&mesh("tp=2"), 2).unwrap_err(),
            EquationError::Unbound { rule: "v", .. }
        ));
        let typo = Equation {
            name: "w",
            lhs: "(all_reduce{axes=$ax} ?p)",
            rhs: "?p",
        };
        assert!(matches!(
            typo.instantiate(&mesh("tp=2"), 2).unwrap_err(),
            EquationError::Pattern { rule: "w", .. }
        ));
    }
}
