//! Authentication revocation, on Serverpod's channel names (R01 to R03).
//!
//! When a user's sign-in is revoked, every server must close that user's affected
//! connections. Serverpod does it with messages: a revocation is posted on the user's own
//! channel, [`revoked_authentication_channel`], and each connection of that user listens
//! there and checks [`RevokedAuthentication::affects`] against itself. Posting one is
//! [`Messages::revoke_authentication`](crate::Messages::revoke_authentication).

use serde::{Deserialize, Serialize};

/// A revocation of a user's authentication, as Serverpod has it.
///
/// One Rust type for Serverpod's three model classes. On Redis it travels with Serverpod's
/// class names and fields (`serverpod.RevokedAuthenticationUser` with no data,
/// `serverpod.RevokedAuthenticationAuthId` with `authId`, `serverpod.RevokedAuthenticationScope`
/// with `scopes`), not in this type's derived serde form (R02). On the local path it is
/// received as itself by `create_stream::<RevokedAuthentication>` and `add_listener`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokedAuthentication {
    /// Every authentication of the user is revoked.
    User,
    /// One authentication (one sign-in, one token) of the user is revoked.
    AuthId(String),
    /// These scopes are revoked from the user.
    Scope(Vec<String>),
}

impl RevokedAuthentication {
    /// Whether a connection authenticated as `auth_id`, on an endpoint that requires
    /// `required_scopes`, must be closed by this revocation (Serverpod's rule, R03):
    ///
    /// - `User` affects every authenticated connection;
    /// - `AuthId(a)` affects only the connection authenticated as `a`;
    /// - `Scope(s)` affects a connection whose endpoint requires any scope in `s`;
    /// - an unauthenticated connection (`auth_id == None`) is never affected.
    ///
    /// ```
    /// use evbus::RevokedAuthentication;
    /// let revoked = RevokedAuthentication::Scope(vec!["admin".into()]);
    /// assert!(revoked.affects(Some("a1"), &["admin", "user"]));
    /// assert!(!revoked.affects(Some("a1"), &["user"]));
    /// assert!(!RevokedAuthentication::User.affects(None, &[]));
    /// ```
    pub fn affects(&self, auth_id: Option<&str>, required_scopes: &[&str]) -> bool {
        let Some(auth_id) = auth_id else { return false };
        match self {
            RevokedAuthentication::User => true,
            RevokedAuthentication::AuthId(revoked) => revoked == auth_id,
            RevokedAuthentication::Scope(revoked) => revoked
                .iter()
                .any(|scope| required_scopes.contains(&scope.as_str())),
        }
    }
}

/// The channel that carries revocations of `user_identifier`'s authentication:
/// `_serverpod_revoked_authentication_{user_identifier}`, Serverpod's name.
pub fn revoked_authentication_channel(user_identifier: &str) -> String {
    format!("_serverpod_revoked_authentication_{user_identifier}")
}
