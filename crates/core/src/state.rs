//! The states that records move through (segment transitions, deliveries,
//! cron fires) and why: stored as their `as_str`, read back with `parse`.

use serde::Serialize;
use std::fmt;

/// Why a user was (re-)evaluated; stored with every transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    Event,
    Member,
    Link,
    Follow,
    /// A change reported without a more precise reason.
    Change,
    /// A time boundary (window, `older_than`, midnight) passed.
    Time,
    Recompute,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Event => "event",
            Cause::Member => "member",
            Cause::Link => "link",
            Cause::Follow => "follow",
            Cause::Change => "change",
            Cause::Time => "time",
            Cause::Recompute => "recompute",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "event" => Cause::Event,
            "member" => Cause::Member,
            "link" => Cause::Link,
            "follow" => Cause::Follow,
            "change" => Cause::Change,
            "time" => Cause::Time,
            "recompute" => Cause::Recompute,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransitionKind {
    Entered,
    Exited,
}

impl TransitionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionKind::Entered => "entered",
            TransitionKind::Exited => "exited",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "entered" => Some(TransitionKind::Entered),
            "exited" => Some(TransitionKind::Exited),
            _ => None,
        }
    }
}

/// Where a delivery is in its life. Stored on the delivery while it is
/// pending or skipped; once in a request, its request's state decides
/// (pending → `Requested`, sent → `Sent`, failed → `Failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for `due_at` (and for a lease).
    Pending,
    /// Passed the policies and assigned to a request (counts as sent for caps).
    Requested,
    /// LINE accepted the request (2xx or 409 for its retry key).
    Sent,
    /// A policy said no; `skip_reason` says which.
    Skipped,
    /// LINE refused the request permanently (a 4xx other than 409/429).
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Requested => "requested",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Skipped => "skipped",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => DeliveryStatus::Pending,
            "requested" => DeliveryStatus::Requested,
            "sent" => DeliveryStatus::Sent,
            "skipped" => DeliveryStatus::Skipped,
            "failed" => DeliveryStatus::Failed,
            _ => return None,
        })
    }
}

/// Why a delivery was not sent. Stored as its `as_str` and counted in stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The trigger could not produce a message (bad time property, render error).
    InvalidTrigger,
    /// The user has blocked the account or is not a friend.
    Unfollowed,
    /// The member is not (or no longer) linked to a LINE user.
    Unlinked,
    /// Not in the campaign's `audience` segment at send time.
    NotInAudience,
    /// The campaign's `unless` event happened.
    Cancelled,
    /// The campaign's `frequency_cap` is reached for this user.
    FrequencyCap,
    /// The global per-user cap is reached.
    GlobalCap,
    /// The campaign was removed from the configuration before sending.
    CampaignRemoved,
    /// The send time had passed by more than the catch-up grace when the
    /// trigger arrived (e.g. a reminder for a reservation posted too late).
    Expired,
    /// Sendable, but in the campaign's control group (`holdout`): nothing is
    /// sent, and its conversions are measured as the treated group's.
    Holdout,
    /// A step of a sequence whose id is no longer in the campaign file.
    StepRemoved,
    /// The user's sequence ended (`exit`) before this step.
    Exited,
    /// The step's `if` did not hold (the sequence goes on).
    StepCondition,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::InvalidTrigger => "invalid_trigger",
            SkipReason::Unfollowed => "unfollowed",
            SkipReason::Unlinked => "unlinked",
            SkipReason::NotInAudience => "not_in_audience",
            SkipReason::Cancelled => "cancelled",
            SkipReason::FrequencyCap => "frequency_cap",
            SkipReason::GlobalCap => "global_cap",
            SkipReason::CampaignRemoved => "campaign_removed",
            SkipReason::Expired => "expired",
            SkipReason::Holdout => "holdout",
            SkipReason::StepRemoved => "step_removed",
            SkipReason::Exited => "exited",
            SkipReason::StepCondition => "step_condition",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SkipReason {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "invalid_trigger" => SkipReason::InvalidTrigger,
            "unfollowed" => SkipReason::Unfollowed,
            "unlinked" => SkipReason::Unlinked,
            "not_in_audience" => SkipReason::NotInAudience,
            "cancelled" => SkipReason::Cancelled,
            "frequency_cap" => SkipReason::FrequencyCap,
            "global_cap" => SkipReason::GlobalCap,
            "campaign_removed" => SkipReason::CampaignRemoved,
            "expired" => SkipReason::Expired,
            "holdout" => SkipReason::Holdout,
            "step_removed" => SkipReason::StepRemoved,
            "exited" => SkipReason::Exited,
            "step_condition" => SkipReason::StepCondition,
            _ => return None,
        })
    }
}

/// Why a due delivery was put back to wait (the planner's defer), kept with
/// it in the queue so operators see what it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeferReason {
    /// The campaign's or the account's quiet hours.
    QuietHours,
    /// The month's message quota (the quota guard holds sends).
    Quota,
}

impl DeferReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeferReason::QuietHours => "quiet_hours",
            DeferReason::Quota => "quota",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "quiet_hours" => DeferReason::QuietHours,
            "quota" => DeferReason::Quota,
            _ => return None,
        })
    }
}

/// Where a recorded cron fire of a scheduled campaign is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FireState {
    /// Its deliveries are being enqueued (left so by a crash: to finish).
    Started,
    Done,
    /// Skipped by the catch-up rule.
    Missed,
}

impl FireState {
    pub fn as_str(self) -> &'static str {
        match self {
            FireState::Started => "started",
            FireState::Done => "done",
            FireState::Missed => "missed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "started" => FireState::Started,
            "done" => FireState::Done,
            "missed" => FireState::Missed,
            _ => return None,
        })
    }
}
