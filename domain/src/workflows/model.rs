//! What a workflow is made of, as pure rules: its kinds and their steps,
//! the statuses of workflows and steps and the moves between them. No
//! database here; the backoff of outbound retries is `tx::retry_delay`.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkflowKind {
    /// hold the funds → send the payout → capture the hold (void the hold
    /// if the payout fails for good).
    Withdrawal,
    /// compliance check (review at or above the threshold) → credit.
    Deposit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepName {
    Hold,
    Payout,
    Capture,
    Compliance,
    Credit,
}

/// How a step takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// Moves money: its effect and its checkpoint commit in one
    /// transaction, so it takes effect exactly once.
    Ledger,
    /// Calls a provider outside: at least once, made safe by the provider's
    /// idempotency key (the workflow id).
    Outbound,
    /// Waits for a person's decision.
    Review,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkflowStatus {
    Running,
    AwaitingReview,
    AwaitingPayout,
    Completed,
    Compensated,
    Rejected,
    /// Dead letter: stopped for an admin (`retry`, or the payout result).
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepStatus {
    Pending,
    Running,
    Done,
    Compensated,
    Failed,
}

/// Whether a workflow goes forward through its steps or undoes the done
/// ones in reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Forward,
    Compensate,
}

macro_rules! names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($name => Some($ty::$variant),)+ _ => None }
            }
        }
    };
}

names!(WorkflowKind { Withdrawal => "withdrawal", Deposit => "deposit" });
names!(StepName {
    Hold => "hold",
    Payout => "payout",
    Capture => "capture",
    Compliance => "compliance",
    Credit => "credit",
});
names!(WorkflowStatus {
    Running => "running",
    AwaitingReview => "awaiting_review",
    AwaitingPayout => "awaiting_payout",
    Completed => "completed",
    Compensated => "compensated",
    Rejected => "rejected",
    Failed => "failed",
});
names!(StepStatus {
    Pending => "pending",
    Running => "running",
    Done => "done",
    Compensated => "compensated",
    Failed => "failed",
});
names!(Phase { Forward => "forward", Compensate => "compensate" });

impl WorkflowKind {
    /// Its steps, in order.
    pub fn steps(self) -> &'static [StepName] {
        match self {
            Self::Withdrawal => &[StepName::Hold, StepName::Payout, StepName::Capture],
            Self::Deposit => &[StepName::Compliance, StepName::Credit],
        }
    }
}

impl StepName {
    pub fn kind(self) -> StepKind {
        match self {
            Self::Hold | Self::Capture | Self::Credit => StepKind::Ledger,
            Self::Payout => StepKind::Outbound,
            Self::Compliance => StepKind::Review,
        }
    }

    /// Whether a done step has an effect to undo when its workflow
    /// compensates: the hold is voided. A capture or a credit is the last
    /// step, after which nothing can fail; the payout's failure is what
    /// starts compensation, and the compliance check changed nothing.
    pub fn compensable(self) -> bool {
        self == Self::Hold
    }
}

impl WorkflowStatus {
    /// Ended for good: nothing moves it again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Rejected)
    }

    /// The moves the engine and the admin routes make: a final status never
    /// changes; `failed` only goes back to `running` (admin retry) or takes
    /// a late payout result; a wait ends by going on, or by its own
    /// ending (a rejection, a failed payout's compensation, a deadline).
    pub fn can_become(self, next: Self) -> bool {
        use WorkflowStatus::*;
        match self {
            Completed | Compensated | Rejected => false,
            Running => next != Running,
            AwaitingReview => matches!(next, Running | Rejected | Failed),
            AwaitingPayout => matches!(next, Running | Failed),
            Failed => next == Running,
        }
    }
}

impl StepStatus {
    /// A step runs (possibly several attempts), then is done or failed; a
    /// done step may be compensated; a failed one may be retried by an
    /// admin (back to pending).
    pub fn can_become(self, next: Self) -> bool {
        use StepStatus::*;
        matches!(
            (self, next),
            (Pending, Running | Done | Failed)
                | (Running, Done | Failed | Pending)
                | (Done, Compensated)
                | (Failed, Pending | Running | Done)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in WorkflowKind::ALL {
            assert_eq!(WorkflowKind::parse(k.as_str()), Some(*k));
        }
        for s in WorkflowStatus::ALL {
            assert_eq!(WorkflowStatus::parse(s.as_str()), Some(*s));
        }
        for s in StepStatus::ALL {
            assert_eq!(StepStatus::parse(s.as_str()), Some(*s));
        }
        for s in StepName::ALL {
            assert_eq!(StepName::parse(s.as_str()), Some(*s));
        }
        assert_eq!(WorkflowStatus::parse("Running"), None);
    }

    #[test]
    fn withdrawals_hold_pay_capture_and_only_the_hold_is_undone() {
        assert_eq!(
            WorkflowKind::Withdrawal.steps(),
            [StepName::Hold, StepName::Payout, StepName::Capture]
        );
        assert_eq!(
            WorkflowKind::Deposit.steps(),
            [StepName::Compliance, StepName::Credit]
        );
        let undone: Vec<_> = StepName::ALL.iter().filter(|s| s.compensable()).collect();
        assert_eq!(undone, [&StepName::Hold]);
        assert_eq!(StepName::Payout.kind(), StepKind::Outbound);
        assert_eq!(StepName::Capture.kind(), StepKind::Ledger);
        assert_eq!(StepName::Compliance.kind(), StepKind::Review);
    }

    #[test]
    fn final_statuses_never_change_and_failed_only_resumes() {
        for from in WorkflowStatus::ALL {
            for to in WorkflowStatus::ALL {
                let allowed = from.can_become(*to);
                if from.is_final() {
                    assert!(!allowed, "{from:?} -> {to:?}");
                }
                if *from == WorkflowStatus::Failed {
                    assert_eq!(allowed, *to == WorkflowStatus::Running, "{to:?}");
                }
            }
        }
        assert!(WorkflowStatus::AwaitingReview.can_become(WorkflowStatus::Rejected));
        assert!(!WorkflowStatus::AwaitingPayout.can_become(WorkflowStatus::Rejected));
        assert!(WorkflowStatus::Running.can_become(WorkflowStatus::Compensated));
        assert!(!WorkflowStatus::Running.can_become(WorkflowStatus::Running));
    }

    #[test]
    fn a_done_step_is_only_ever_compensated() {
        use StepStatus::*;
        for to in StepStatus::ALL {
            assert_eq!(Done.can_become(*to), *to == Compensated, "{to:?}");
            assert!(!Compensated.can_become(*to), "{to:?}");
        }
        assert!(Pending.can_become(Running));
        assert!(Running.can_become(Pending));
        assert!(Failed.can_become(Pending));
        assert!(!Pending.can_become(Compensated));
    }
}
