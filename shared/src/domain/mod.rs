//! The rules of the chat, between the handlers and the adapters: an answer's
//! life ([`answer`]), the relay of the upstream to the browser ([`relay`]), live
//! answers kept in DynamoDB while they stream ([`live`]), per-user limits
//! ([`limits`]) and what the model sees ([`prompt`]).

pub mod answer;
pub mod limits;
pub mod live;
pub mod prompt;
pub mod relay;
