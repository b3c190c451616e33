//! The LINE platform as renkei sees it: webhook signature and events, the
//! Messaging API client (push, multicast, reply, link token, rich menus,
//! quota) and LINE Login ID token verification.

pub mod client;
pub mod limits;
pub mod webhook;

pub use client::{
    AccessToken, ClientOptions, ErrorDetail, IdTokenClaims, LineClient, LineError, Message, MulticastRequest, Profile,
    PushRequest, Quota, ReplyRequest, RichMenu, Sent, SentMessage, UnitStatistics,
};
pub use webhook::{
    EventKind, LinkResult, MessageContent, Source, WebhookBody, WebhookError, WebhookEvent, parse_webhook, sign,
    verify_signature,
};
