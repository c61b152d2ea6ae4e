//! What a route reaches: one module per route of SPEC section 2, and what
//! `send` and `regenerate` share before their stream opens (`accept`).
//!
//! | function | route | handler |
//! |---|---|---|
//! | send | `POST /api/conversations/{id}/messages` | [`send`] |
//! | send | `GET /api/conversations/{id}/stream` | [`resume`] |
//! | regenerate | `POST /api/conversations/{id}/regenerate` | [`regenerate`] |
//! | conversations | `POST`/`GET /api/conversations`, `GET`/`PUT`/`DELETE /api/conversations/{id}` | [`conversations`] |
//! | conversations | `POST /api/conversations/{id}/stop` | [`stop`] |

mod accept;
pub mod conversations;
pub mod regenerate;
pub mod resume;
pub mod send;
pub mod stop;
