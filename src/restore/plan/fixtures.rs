//! Listings built by hand for the tests of `restore/plan.rs`.

use super::*;
use crate::storage::layout;

pub fn g(n: u64) -> GenerationId {
    GenerationId::new(n, 0)
}

pub fn snap_at(g_id: &GenerationId, txid: u64, ms: u64) -> Listed {
    Listed {
        name: layout::format_snapshot(
            g_id,
            &SnapshotName {
                txid,
                commit_ms: ms,
            },
        ),
        size: 100,
        modified_ms: ms,
    }
}

pub fn seg_at(g_id: &GenerationId, a: u64, b: u64, ta: u64, tb: u64) -> Listed {
    Listed {
        name: layout::format_segment(
            g_id,
            &SegmentName {
                first_txid: a,
                last_txid: b,
                first_commit_ms: ta,
                last_commit_ms: tb,
            },
        ),
        size: 10,
        modified_ms: tb,
    }
}

/// `plan` with every listed manifest taken as read and valid (planner logic only).
pub fn plan_trusting(
    gens: &BTreeMap<GenerationId, Generation>,
    only: Option<&GenerationId>,
    target: Target,
) -> Result<Plan, PlanError> {
    let mut gens = gens.clone();
    for g in gens.values_mut() {
        if g.manifest == ManifestState::Unread {
            g.manifest = ManifestState::Valid {
                continues_parent_at: None,
                parent_unchanged: None,
            };
        }
    }
    plan(&gens, only, target, false)
}

pub fn manifest(g_id: &GenerationId) -> Listed {
    Listed {
        name: layout::format_manifest(g_id),
        size: 1,
        modified_ms: 0,
    }
}
