//! Patterns naming op families, for matches that must list every op.
//!
//! A pass or backend that prices, remaps or executes ops matches on [`crate::Op`] without a `_`
//! arm, so that a new op is a compile error in each place until it is handled. These macros keep
//! such matches short where ops of one family are handled alike: `moe_ir::pointwise_ops!()` is a
//! pattern (`Op::Add | Op::Mul | ...`). A new op added to a family is then handled like its
//! family everywhere the family is named: add it here only when that is right.

/// Element-by-element ops: `scale`, `add`, `mul`, the activations and `swiglu`.
#[macro_export]
macro_rules! pointwise_ops {
    () => {
        $crate::Op::Scale { .. }
            | $crate::Op::Add
            | $crate::Op::Mul
            | $crate::Op::Gelu
            | $crate::Op::Silu
            | $crate::Op::Relu
            | $crate::Op::Sigmoid
            | $crate::Op::Swiglu
    };
}

/// The unary activations (`gelu`, `silu`, `relu`, `sigmoid`).
#[macro_export]
macro_rules! activation_ops {
    () => {
        $crate::Op::Gelu | $crate::Op::Silu | $crate::Op::Relu | $crate::Op::Sigmoid
    };
}

/// Leaves that declare their type and are made, not computed: `input`, `weight`, `zeros`.
#[macro_export]
macro_rules! leaf_ops {
    () => {
        $crate::Op::Input(_) | $crate::Op::Weight(_) | $crate::Op::Zeros(_)
    };
}

/// Collectives over one mesh axis (those with an [`crate::Op::collective_axis`]).
#[macro_export]
macro_rules! collective_ops {
    () => {
        $crate::Op::AllToAll { .. }
            | $crate::Op::AllReduce { .. }
            | $crate::Op::AllGather { .. }
            | $crate::Op::ReduceScatter { .. }
    };
}

/// Pipeline transfers between stages: `send`, `recv`.
#[macro_export]
macro_rules! transfer_ops {
    () => {
        $crate::Op::Send { .. } | $crate::Op::Recv { .. }
    };
}

#[cfg(test)]
mod tests {
    use crate::Op;

    /// The families agree with the predicates the IR states elsewhere.
    #[test]
    fn families_agree_with_the_op_predicates() {
        let ops: Vec<Op> = Op::NAMES
            .iter()
            .filter_map(|n| serde_json::from_value(serde_json::json!(n)).ok())
            .chain([
                Op::AllReduce { axis: "a".into() },
                Op::AllGather {
                    axis: "a".into(),
                    dim: 0,
                },
                Op::ReduceScatter {
                    axis: "a".into(),
                    dim: 0,
                },
                Op::AllToAll {
                    axis: "a".into(),
                    split_dim: 0,
                    concat_dim: 1,
                },
                Op::Send { channel: 0 },
            ])
            .collect();
        assert!(ops.len() > 15, "{}", ops.len());
        for op in &ops {
            assert_eq!(
                matches!(op, collective_ops!()),
                op.collective_axis().is_some(),
                "{op:?}"
            );
            assert!(
                !matches!(op, leaf_ops!()) || op.declared_type().is_some(),
                "{op:?}"
            );
            assert!(
                !matches!(op, activation_ops!()) || matches!(op, pointwise_ops!()),
                "{op:?}"
            );
            assert!(
                !matches!(op, transfer_ops!()) || op.communicates(),
                "{op:?}"
            );
        }
    }
}
