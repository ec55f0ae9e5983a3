//! Tokens at the HTTP boundary: where a request carries a user's or
//! service's token, and the one call that verifies it against the live
//! set's trusted issuers (`identity`). A refused token is a 401 with its
//! reason code in the one error shape; never a decision.
//!
//! - Decisions: `principal_token` in `/v1/is_authorized` and its batch
//!   (AVP's `IsAuthorizedWithToken`), `subject.properties.token` in AuthZEN.
//! - Management: `X-Actor-Token` beside a `manage` key names the acting
//!   user; on the routes an end user calls directly (sign-up, accept an
//!   invite, one's own user and memberships) the user's token alone, as
//!   `Authorization: Bearer <token>`.

use std::borrow::Cow;
use std::sync::Arc;

use super::error::ApiError;
use super::state::AppState;
use crate::identity::Verified;

/// The header that carries the acting user's token beside a caller key.
pub const ACTOR_TOKEN: &str = "x-actor-token";

/// Verifies `token` against the live set's issuers. `what` names where it
/// came from in the error; `challenge` when it came in `Authorization`.
pub async fn verify(
    state: &AppState,
    token: &str,
    what: &str,
    challenge: bool,
) -> Result<Arc<Verified>, ApiError> {
    let snapshot = state.pdp.live().snapshot();
    state
        .identity
        .verify(&snapshot.issuers, token)
        .await
        .map_err(|e| ApiError::token(&e, what, challenge))
}

/// The verified `principal_token` of a decision body, if its top level has
/// one: read before the body is decided (verifying may fetch keys), so the
/// body is looked at twice only when it names the field.
pub async fn principal_token(
    state: &AppState,
    body: &[u8],
) -> Result<Option<Arc<Verified>>, ApiError> {
    const FIELD: &[u8] = b"principal_token";
    if !body.windows(FIELD.len()).any(|w| w == FIELD) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct Peek<'a> {
        #[serde(borrow, default)]
        principal_token: Option<Cow<'a, str>>,
    }
    // A body that cannot be read is refused by the full reading that
    // follows, naming what is wrong.
    let Ok(Peek {
        principal_token: Some(token),
    }) = serde_json::from_slice::<Peek<'_>>(body)
    else {
        return Ok(None);
    };
    verify(state, &token, "principal_token", false)
        .await
        .map(Some)
}
