//! Bearer tokens for the virtual users and the admin.
//!
//! With the gateway's HS256 secret the load generator mints its own tokens (claims as the
//! gateway expects: `sub`, `email`, `roles`, `iss`, `aud`, `exp`), one user per virtual user.
//! Without it, a `tokens.env` written by `scripts/run` gives one user (alice) and the admin.

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

pub struct Tokens {
    /// Virtual user `k` books with `users[k]`.
    pub users: Vec<String>,
    pub admin: String,
}

pub struct Minter {
    key: EncodingKey,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl Minter {
    pub fn new(secret: &str, issuer: &str, audience: &str, ttl: Duration) -> Self {
        Minter {
            key: EncodingKey::from_secret(secret.as_bytes()),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            ttl,
        }
    }

    pub fn mint(&self, user: &str, admin: bool) -> anyhow::Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let roles: &[&str] = if admin { &["user", "admin"] } else { &["user"] };
        let claims = json!({
            "sub": user,
            "email": format!("{user}@loadgen.example"),
            "roles": roles,
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "exp": now + self.ttl.as_secs(),
        });
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .context("signing a token")
    }

    /// `users` virtual users named `{prefix}-u{k}` and one admin.
    pub fn tokens(&self, prefix: &str, users: usize) -> anyhow::Result<Tokens> {
        let user_ids: Vec<String> = (0..users.max(1))
            .map(|k| format!("{prefix}-u{k}"))
            .collect();
        let users = user_ids
            .iter()
            .map(|u| self.mint(u, false))
            .collect::<anyhow::Result<_>>()?;
        Ok(Tokens {
            users,
            admin: self.mint(&format!("{prefix}-admin"), true)?,
        })
    }
}

/// Reads `ALICE_TOKEN` and `ADMIN_TOKEN` from a `KEY=VALUE` file like `scripts/run`'s tokens.env.
pub fn from_tokens_file(path: &Path) -> anyhow::Result<Tokens> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value = |key: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .find(|v| !v.is_empty())
    };
    let user = value("ALICE_TOKEN").context("no ALICE_TOKEN in the tokens file")?;
    let admin = value("ADMIN_TOKEN").context("no ADMIN_TOKEN in the tokens file")?;
    Ok(Tokens {
        users: vec![user],
        admin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn minted_tokens_carry_what_the_gateway_checks() {
        let minter = Minter::new(
            "s3cret",
            "roombook",
            "roombook-api",
            Duration::from_secs(600),
        );
        let tokens = minter.tokens("lg", 3).unwrap();
        assert_eq!(tokens.users.len(), 3);
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&["roombook"]);
        v.set_audience(&["roombook-api"]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let key = DecodingKey::from_secret(b"s3cret");
        let user = jsonwebtoken::decode::<serde_json::Value>(&tokens.users[1], &key, &v).unwrap();
        assert_eq!(user.claims["sub"], "lg-u1");
        assert_eq!(user.claims["roles"], json!(["user"]));
        let admin = jsonwebtoken::decode::<serde_json::Value>(&tokens.admin, &key, &v).unwrap();
        assert_eq!(admin.claims["roles"], json!(["user", "admin"]));
    }

    #[test]
    fn a_tokens_file_gives_alice_and_the_admin() {
        let dir = std::env::temp_dir().join(format!("loadgen-tokens-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.env");
        std::fs::write(
            &path,
            "# comment\nGATEWAY_URL=http://localhost:8088\nALICE_TOKEN=a.b.c\nADMIN_TOKEN=d.e.f\n",
        )
        .unwrap();
        let t = from_tokens_file(&path).unwrap();
        assert_eq!(t.users, vec!["a.b.c".to_string()]);
        assert_eq!(t.admin, "d.e.f");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
