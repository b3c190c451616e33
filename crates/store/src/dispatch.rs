//! The dispatch-side areas under their former path (`renkei_store::dispatch::…`):
//! the outbox, LINE requests, the scheduler's state and rich menus.

pub use crate::outbox::{
    AlikeFire, CampaignCounts, Claim, ClaimOutcome, Delivery, DeliveryStatus, NewDelivery, OutboxReads, OutboxStore,
    PendingDelivery, QueueKey, SkipReason, UserSendFacts,
};
pub use crate::requests::{NewRequest, RequestKind, RequestStatus, RequestStore, SendRequest};
pub use crate::rich_menus::{RichMenuChange, RichMenuStore};
pub use crate::schedule::{CronFire, FireState, ScheduleStore};
