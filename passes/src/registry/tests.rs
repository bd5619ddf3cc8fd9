#![allow(clippy::unwrap_used)]

use super::*;
use crate::rules::testing::small;

fn kind(list: &str) -> (usize, PassListErrorKind) {
    let e = parse(list).unwrap_err();
    (e.column, e.kind)
}

#[test]
fn lists_read_back_as_they_print() {
    for list in [
        "remap(tp=8),dispatch,partition(pp=4),schedule(1f1b)",
        "dead-code",
        "dispatch(rules=shard-of-all-reduce+all-to-all-of-shard)",
        "dispatch,partition(pp=2, layout=1:1, micro_batches=6, recompute=true),schedule(gpipe)",
        "partition(pp=2, layout=equal),schedule(interleaved, chunks=3)",
    ] {
        let steps = parse(list).unwrap();
        assert_eq!(to_text(&steps), list);
        assert_eq!(parse(&to_text(&steps)).unwrap(), steps);
    }
    let spaced = parse(" remap( tp = 8 ) , dispatch ").unwrap();
    assert_eq!(
        spaced,
        [PassStep::Remap { tp: 8 }, PassStep::Dispatch { only: None }]
    );
    assert_eq!(
        parse("partition(pp=4)").unwrap(),
        [PassStep::Partition {
            pp: 4,
            layout: Layout::Balanced,
            schedule: Schedule::OneFOneB,
            micro_batches: None,
            recompute: false
        }]
    );
}

#[test]
fn bad_lists_name_the_column_and_the_problem() {
    assert!(
        matches!(kind("dispatch,frob"), (10, PassListErrorKind::UnknownPass(p)) if p == "frob")
    );
    assert!(matches!(
        kind("remap(tp=8, pp=2)"),
        (13, PassListErrorKind::UnknownOption { pass: "remap", .. })
    ));
    assert!(matches!(
        kind("remap(tp=eight)"),
        (7, PassListErrorKind::BadValue { option: "tp", .. })
    ));
    assert!(matches!(
        kind("remap"),
        (1, PassListErrorKind::Missing { option: "tp", .. })
    ));
    assert!(matches!(
        kind("dispatch,schedule(1f1b)"),
        (10, PassListErrorKind::ScheduleWithoutPartition)
    ));
    assert!(matches!(
        kind("dispatch,,dead-code"),
        (10, PassListErrorKind::Expected { .. })
    ));
    assert!(matches!(
        kind("remap(tp=8"),
        (11, PassListErrorKind::Expected { .. })
    ));
    assert!(matches!(
        kind("dispatch(x)"),
        (10, PassListErrorKind::UnknownOption { .. })
    ));
    assert!(matches!(
        kind("partition(pp=2, layout=1:x)"),
        (17, PassListErrorKind::BadValue { .. })
    ));
    assert!(matches!(kind(" "), (1, PassListErrorKind::Empty)));
    assert!(matches!(
        kind("dispatch(rules=shard-of-all-reduce+nope)"),
        (
            10,
            PassListErrorKind::BadValue {
                option: "rules",
                ..
            }
        )
    ));
    assert_eq!(
        parse("dispatch dead-code").unwrap_err().to_string(),
        "pass list, column 1: unknown pass `dispatch dead-code` (passes: dead-code, remap, dispatch, partition, schedule)"
    );
}

#[test]
fn every_registered_pass_runs_alone_and_in_a_pipeline() {
    let ctx = PassContext::default();
    let g = small("ep=4", &[]);
    for list in [
        "dead-code",
        "remap(tp=4)",
        "dispatch",
        "dispatch(rules=dispatch-a2a-to-allgather-slicing)",
        "partition(pp=2)",
        "partition(pp=2),schedule(gpipe)",
        "remap(tp=4),dispatch,partition(pp=2),schedule(1f1b)",
    ] {
        let steps = parse(list).unwrap();
        let (out, stats) = pipeline(&steps, &ctx)
            .run(g.clone())
            .unwrap_or_else(|e| panic!("{list}: {e}"));
        assert_eq!(stats.len(), steps.len(), "{list}");
        moe_ir::validate(&out).unwrap();
        if list.contains("remap(tp=4),dispatch") {
            assert_eq!(
                moe_ir::Summary::of(&out).collectives.all_to_all,
                0,
                "{list}"
            );
        }
        if list.contains("gpipe") {
            assert_eq!(out.pipeline.unwrap().schedule, Schedule::Gpipe);
        }
    }
}

#[test]
fn rewrite_is_the_named_pipeline_of_its_flags() {
    assert_eq!(to_text(&rewrite_steps(None, None)), "dispatch");
    let part = parse("partition(pp=4)").unwrap().pop();
    assert_eq!(
        to_text(&rewrite_steps(Some(8), part)),
        "remap(tp=8),dispatch,partition(pp=4),schedule(1f1b)"
    );
}
