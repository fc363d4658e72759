//! Bearer-token authentication. The gateway is the only place tokens are checked; the services
//! trust the identity headers it sets, so a caller must never be able to set them itself.
//!
//! HS256 tokens are checked with `JWT_SECRET`, RS256 and ES256 tokens with the key their `kid`
//! names in the identity provider's JWK set ([`crate::jwks`]); a token of a kind with nothing
//! configured to check it, or of any other algorithm (`none` included), is refused.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::http::{header, HeaderMap, HeaderValue};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use platform::http::{Identity, Problem};
use serde::{Deserialize, Serialize};

use crate::{
    config::JwtConfig,
    jwks::{JwksStore, KeyError},
};

/// Seconds a client is told to wait while the JWK set has not been loaded yet.
const KEYS_RETRY_AFTER_SECS: u64 = 5;

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
    #[error("{0:?} tokens are not accepted")]
    AlgorithmNotAccepted(Algorithm),
    #[error("the token names no key (`kid`)")]
    NoKeyId,
    #[error("the token's key {0:?} is not in the JWK set")]
    UnknownKey(String),
    #[error("the token's key {0:?} is not for {1:?}")]
    KeyAlgorithmMismatch(String, Algorithm),
    /// Not the caller's fault: no JWK set has been loaded yet (503, not 401).
    #[error("the JWK set has not been loaded yet")]
    KeysNotLoaded,
}

impl AuthError {
    /// Whether the answer is 401 (the token is refused) rather than 503 (it cannot be checked
    /// now).
    pub fn is_unauthorized(&self) -> bool {
        !matches!(self, AuthError::KeysNotLoaded)
    }
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
            AuthError::AlgorithmNotAccepted(alg) => {
                format!("tokens signed with {alg:?} are not accepted here")
            }
            AuthError::NoKeyId => "the token does not name its signing key (`kid`)".to_string(),
            AuthError::UnknownKey(_) => "the token's signing key is not known".to_string(),
            AuthError::KeyAlgorithmMismatch(..) => {
                "the token's algorithm does not match its signing key".to_string()
            }
            AuthError::KeysNotLoaded => {
                tracing::warn!("a token could not be checked: the JWK set is not loaded yet");
                return Problem::unavailable(
                    "the keys that check this token are not loaded yet; try again shortly",
                    KEYS_RETRY_AFTER_SECS,
                );
            }
        };
        tracing::info!(error = %e, "unauthenticated request");
        Problem::unauthorized(detail)
    }
}

/// Checks tokens: HS256 against the secret, RS256/ES256 against the JWK set's keys; the issuer,
/// audience and expiry in every case.
#[derive(Clone)]
pub struct Verifier {
    secret: Option<DecodingKey>,
    jwks: Option<Arc<JwksStore>>,
    /// Everything but the algorithm, which is set per token from what its key allows.
    validation: Validation,
}

impl Verifier {
    /// Checks HS256 tokens with the configured secret, if there is one. RS256/ES256 tokens are
    /// refused until [`Verifier::with_jwks`] gives the keys for them.
    pub fn new(config: &JwtConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Clocks inside one deployment agree closely; the default 60 s is generous.
        validation.leeway = 5;
        Verifier {
            secret: config
                .secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks: None,
            validation,
        }
    }

    /// Also checks RS256/ES256 tokens, with the keys of `jwks`.
    pub fn with_jwks(mut self, jwks: Arc<JwksStore>) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// The caller named by the request's bearer token.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Malformed);
        }
        self.verify(token.trim()).await
    }

    /// The caller named by `token`, if it is valid. May wait for the JWK set to be fetched when
    /// the token names a key not loaded yet.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        // The header is not trusted: it only picks the key, and the key fixes the algorithm.
        let header = jsonwebtoken::decode_header(token)?;
        let claims = match (header.alg, &self.secret, &self.jwks) {
            (Algorithm::HS256, Some(secret), _) => self.decode(token, secret, Algorithm::HS256)?,
            (Algorithm::RS256 | Algorithm::ES256, _, Some(jwks)) => {
                let kid = header
                    .kid
                    .filter(|k| !k.is_empty())
                    .ok_or(AuthError::NoKeyId)?;
                let keys = jwks.key(&kid).await.map_err(|e| match e {
                    KeyError::Unknown => AuthError::UnknownKey(kid.clone()),
                    KeyError::NotLoaded => AuthError::KeysNotLoaded,
                })?;
                let key = keys.get(&kid).ok_or(AuthError::UnknownKey(kid.clone()))?;
                if key.algorithm != header.alg {
                    return Err(AuthError::KeyAlgorithmMismatch(kid, header.alg));
                }
                self.decode(token, &key.key, key.algorithm)?
            }
            (alg, ..) => return Err(AuthError::AlgorithmNotAccepted(alg)),
        };
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

impl Verifier {
    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        algorithm: Algorithm,
    ) -> Result<Claims, AuthError> {
        let mut validation = self.validation.clone();
        validation.algorithms = vec![algorithm];
        Ok(jsonwebtoken::decode::<Claims>(token, key, &validation)?.claims)
    }
}

fn header_safe(s: &str) -> bool {
    HeaderValue::from_str(s).is_ok() && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_minted_token_verifies_to_its_identity() {
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
        let identity = Verifier::new(&config).verify(&token).await.unwrap();
        assert_eq!(
            identity,
            Identity {
                user_id: "alice".into(),
                email: Some("alice@example.com".into()),
                roles: vec!["user".into(), "admin".into()],
            }
        );
    }

    #[tokio::test]
    async fn a_role_with_a_comma_is_refused_because_roles_travel_comma_joined() {
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
            Verifier::new(&config).verify(&token).await,
            Err(AuthError::UnusableClaims(_))
        ));
    }

    #[tokio::test]
    async fn a_non_bearer_authorization_header_is_malformed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6cHc="),
        );
        let verifier = Verifier::new(&JwtConfig::with_secret("s3cret"));
        assert!(matches!(
            verifier.authenticate(&headers).await,
            Err(AuthError::Malformed)
        ));
    }
}
