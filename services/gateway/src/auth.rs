//! Bearer-token authentication. The gateway is the only place tokens are checked; the services
//! trust the identity headers it sets, so a caller must never be able to set them itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use platform::http::{Identity, Problem};
use serde::{Deserialize, Serialize};

use crate::config::JwtConfig;

/// Mints an HS256 token the gateway accepts: for local use and tests, never a production login.
pub fn mint_token(
    secret: &str,
    issuer: &str,
    audience: &str,
    user_id: &str,
    email: Option<&str>,
    roles: &[&str],
    ttl: Duration,
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = MintedClaims {
        sub: user_id,
        email,
        roles,
        iss: issuer,
        aud: audience,
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
    };
    // HMAC signing of a serialisable struct cannot fail.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing does not fail")
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    roles: &'a [&'a str],
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// The claims the gateway uses; `iss`, `aud` and `exp` are checked by the validation.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("the token was rejected: {0}")]
    Rejected(#[from] jsonwebtoken::errors::Error),
    #[error("the token's claims cannot be used: {0}")]
    UnusableClaims(&'static str),
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        let detail = match &e {
            AuthError::Missing => "send a bearer token in the Authorization header".to_string(),
            AuthError::Malformed => "the Authorization header must be `Bearer <token>`".to_string(),
            AuthError::Rejected(e) => match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                    "the token was not issued for this API".to_string()
                }
                ErrorKind::InvalidSignature => "the token's signature is not valid".to_string(),
                ErrorKind::MissingRequiredClaim(claim) => {
                    format!("the token has no `{claim}` claim")
                }
                _ => "the token is not valid".to_string(),
            },
            AuthError::UnusableClaims(why) => format!("the token's claims cannot be used: {why}"),
        };
        tracing::info!(error = %e, "unauthenticated request");
        Problem::unauthorized(detail)
    }
}

/// Checks tokens against one key, issuer and audience.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(config: &JwtConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Clocks inside one deployment agree closely; the default 60 s is generous.
        validation.leeway = 5;
        Verifier {
            key: DecodingKey::from_secret(config.secret.as_bytes()),
            validation,
        }
    }

    /// The caller named by the request's bearer token.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Malformed);
        }
        self.verify(token.trim())
    }

    /// The caller named by `token`, if it is valid.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?.claims;
        // What follows ends up in headers and in the comma-joined roles list.
        let user_id = claims.sub.trim().to_string();
        if user_id.is_empty() || !header_safe(&user_id) {
            return Err(AuthError::UnusableClaims(
                "`sub` must be a non-empty printable string",
            ));
        }
        let email = claims
            .email
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty());
        if email.as_deref().is_some_and(|e| !header_safe(e)) {
            return Err(AuthError::UnusableClaims("`email` must be printable"));
        }
        let mut roles = Vec::with_capacity(claims.roles.len());
        for role in claims.roles {
            let role = role.trim().to_string();
            if role.is_empty() || role.contains(',') || !header_safe(&role) {
                return Err(AuthError::UnusableClaims(
                    "a role must be a printable word without commas",
                ));
            }
            roles.push(role);
        }
        Ok(Identity {
            user_id,
            email,
            roles,
        })
    }
}

fn header_safe(s: &str) -> bool {
    HeaderValue::from_str(s).is_ok() && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_to_its_identity() {
        let config = JwtConfig::with_secret("s3cret");
        let token = mint_token(
            "s3cret",
            &config.issuer,
            &config.audience,
            "alice",
            Some("alice@example.com"),
            &["user", "admin"],
            Duration::from_secs(60),
        );
        let identity = Verifier::new(&config).verify(&token).unwrap();
        assert_eq!(
            identity,
            Identity {
                user_id: "alice".into(),
                email: Some("alice@example.com".into()),
                roles: vec!["user".into(), "admin".into()],
            }
        );
    }

    #[test]
    fn a_role_with_a_comma_is_refused_because_roles_travel_comma_joined() {
        let config = JwtConfig::with_secret("s3cret");
        let token = mint_token(
            "s3cret",
            &config.issuer,
            &config.audience,
            "bob",
            None,
            &["user,admin"],
            Duration::from_secs(60),
        );
        assert!(matches!(
            Verifier::new(&config).verify(&token),
            Err(AuthError::UnusableClaims(_))
        ));
    }

    #[test]
    fn a_non_bearer_authorization_header_is_malformed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6cHc="),
        );
        let verifier = Verifier::new(&JwtConfig::with_secret("s3cret"));
        assert!(matches!(
            verifier.authenticate(&headers),
            Err(AuthError::Malformed)
        ));
    }
}
