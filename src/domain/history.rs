//! What "roll back" means, computed from a label's history.

use super::{LabelMove, MoveKind};

/// Why a label has nothing to roll back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRollbackTarget {
    /// The label never moved.
    NoHistory,
    /// Every earlier move has been rolled back already, back to the state
    /// before the label existed.
    LabelDidNotExist,
}

/// The version a rollback moves `history`'s label to.
///
/// Moves form an undo stack: a promote or a removal pushes its target, a
/// rollback to the previous target pops. So promote v1, v2, v3 then rollback,
/// rollback gives v2 then v1: each rollback undoes the latest move that has
/// not been undone yet. A rollback to an explicit version that is not the
/// previous target counts as a push.
///
/// `history` is oldest first.
pub fn rollback_target(history: &[LabelMove]) -> Result<u64, NoRollbackTarget> {
    if history.is_empty() {
        return Err(NoRollbackTarget::NoHistory);
    }
    // The bottom entry is "the label does not exist".
    let mut stack: Vec<Option<u64>> = vec![None];
    // A rollout's own moves leave the label where it was.
    for mv in history.iter().filter(|m| m.kind != MoveKind::Rollout) {
        let undoes_previous = mv.kind == MoveKind::Rollback
            && stack.len() >= 2
            && stack[stack.len() - 2] == mv.to_version;
        if undoes_previous {
            stack.pop();
        } else {
            stack.push(mv.to_version);
        }
    }
    match stack.len().checked_sub(2).map(|i| stack[i]) {
        Some(Some(version)) => Ok(version),
        _ => Err(NoRollbackTarget::LabelDidNotExist),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LabelName, PromptName};

    fn mv(kind: MoveKind, to: Option<u64>) -> LabelMove {
        LabelMove {
            name: PromptName::parse("n", "p", 128).unwrap(),
            label: LabelName::parse("l", "production").unwrap(),
            revision: 0,
            time: 0,
            kind,
            from_version: None,
            to_version: to,
            digest: None,
            actor: "a".into(),
            reason: "r".into(),
            trace_id: None,
            clearance: Default::default(),
            rollout: None,
        }
    }

    use MoveKind::*;

    #[test]
    fn rollbacks_walk_back_one_step_each() {
        let mut history = vec![
            mv(Promote, Some(1)),
            mv(Promote, Some(2)),
            mv(Promote, Some(3)),
        ];
        assert_eq!(rollback_target(&history), Ok(2));
        history.push(mv(Rollback, Some(2)));
        assert_eq!(rollback_target(&history), Ok(1));
        history.push(mv(Rollback, Some(1)));
        assert_eq!(
            rollback_target(&history),
            Err(NoRollbackTarget::LabelDidNotExist)
        );
    }

    #[test]
    fn rollback_restores_a_removed_label() {
        let history = vec![mv(Promote, Some(4)), mv(Remove, None)];
        assert_eq!(rollback_target(&history), Ok(4));
    }

    #[test]
    fn explicit_rollback_is_a_new_step() {
        let history = vec![
            mv(Promote, Some(1)),
            mv(Promote, Some(5)),
            mv(Rollback, Some(3)),
        ];
        assert_eq!(rollback_target(&history), Ok(5));
    }

    #[test]
    fn nothing_to_roll_back() {
        assert_eq!(rollback_target(&[]), Err(NoRollbackTarget::NoHistory));
        assert_eq!(
            rollback_target(&[mv(Promote, Some(1))]),
            Err(NoRollbackTarget::LabelDidNotExist)
        );
    }
}
