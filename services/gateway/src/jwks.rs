//! The identity provider's signing keys, fetched from its JWK set (`JWT_JWKS_URL`) and kept
//! fresh: fetched at start-up and every `refresh_every` in the background (retried with backoff
//! while failing), and again at once when a token names a `kid` the loaded set lacks, at most
//! once per `min_refetch_interval`. A failed fetch keeps the keys loaded before.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
    Algorithm, DecodingKey,
};
use serde::Deserialize;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use crate::config::JwksConfig;

/// How long one fetch of the JWK set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait before retrying a failed fetch; it doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// A verification key and the one algorithm it is used with.
pub struct Key {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

pub type KeySet = HashMap<String, Key>;

/// Why no key could be given for a `kid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// The loaded set has no such key, even after fetching it again (or the fetch is rate-limited).
    Unknown,
    /// No JWK set has been loaded yet.
    NotLoaded,
}

pub struct JwksStore {
    config: JwksConfig,
    client: reqwest::Client,
    /// `None` until the first successful fetch.
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Successful fetches so far.
    generation: AtomicU64,
    /// Held during every fetch, so that there is one at a time and callers wait for it.
    fetching: Arc<Mutex<FetchState>>,
}

#[derive(Default)]
struct FetchState {
    /// When a token with an unknown `kid` last caused a fetch.
    last_on_demand: Option<Instant>,
}

impl JwksStore {
    /// Starts fetching the set in the background until `cancel` fires. Calls to [`key`] made
    /// before the first fetch has finished wait for it.
    ///
    /// [`key`]: JwksStore::key
    pub async fn start(
        config: JwksConfig,
        client: reqwest::Client,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let store = Arc::new(JwksStore {
            config,
            client,
            keys: RwLock::new(None),
            generation: AtomicU64::new(0),
            fetching: Arc::default(),
        });
        // Taken before anyone can ask for a key, so the first callers wait for the first fetch.
        let first = store.fetching.clone().lock_owned().await;
        tokio::spawn(store.clone().refresh(first, cancel));
        store
    }

    async fn refresh(
        self: Arc<Self>,
        first: OwnedMutexGuard<FetchState>,
        cancel: CancellationToken,
    ) {
        let mut ok = self.fetch("start-up").await;
        drop(first);
        let mut retry = FIRST_RETRY;
        loop {
            let wait = if ok {
                retry = FIRST_RETRY;
                self.config.refresh_every
            } else {
                let wait = retry;
                retry = (retry * 2).min(self.config.refresh_every);
                wait
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let _fetching = self.fetching.lock().await;
            ok = self.fetch(if ok { "refresh" } else { "retry" }).await;
        }
    }

    /// The key named `kid`. An unknown `kid` makes the set be fetched again first, unless a
    /// fetch succeeded while this call waited or one was made for an unknown `kid` within the
    /// last `min_refetch_interval`.
    pub async fn key(&self, kid: &str) -> Result<Arc<KeySet>, KeyError> {
        if let Some(keys) = self.keys_with(kid) {
            return Ok(keys);
        }
        let seen = self.generation.load(Ordering::SeqCst);
        let mut state = self.fetching.lock().await;
        if let Some(keys) = self.keys_with(kid) {
            return Ok(keys);
        }
        let fetched_meanwhile = self.generation.load(Ordering::SeqCst) != seen;
        let allowed = state
            .last_on_demand
            .is_none_or(|at| at.elapsed() >= self.config.min_refetch_interval);
        if !fetched_meanwhile && allowed {
            state.last_on_demand = Some(Instant::now());
            self.fetch("unknown kid").await;
            if let Some(keys) = self.keys_with(kid) {
                return Ok(keys);
            }
        }
        if self.current().is_some() {
            Err(KeyError::Unknown)
        } else {
            Err(KeyError::NotLoaded)
        }
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn keys_with(&self, kid: &str) -> Option<Arc<KeySet>> {
        self.current().filter(|keys| keys.contains_key(kid))
    }

    /// Fetches the set and, if it has a usable key, puts it in place; logs either way. Callers
    /// hold `fetching`.
    async fn fetch(&self, why: &'static str) -> bool {
        match self.download().await {
            Ok(keys) => {
                let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
                kids.sort_unstable();
                tracing::info!(url = %self.config.url, why, kids = ?kids, "JWK set loaded");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
                self.generation.fetch_add(1, Ordering::SeqCst);
                true
            }
            Err(e) => {
                tracing::warn!(url = %self.config.url, why, error = %format!("{e:#}"), "JWK set not loaded; keeping the keys loaded before");
                false
            }
        }
    }

    async fn download(&self) -> anyhow::Result<KeySet> {
        let response = self
            .client
            .get(self.config.url.clone())
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .context("fetching the JWK set")?
            .error_for_status()
            .context("fetching the JWK set")?;
        let set: RawSet = response.json().await.context("reading the JWK set")?;
        let keys = usable_keys(set.keys);
        if keys.is_empty() {
            bail!("the JWK set has no RS256 or ES256 signing key with a `kid`");
        }
        Ok(keys)
    }
}

/// Keys are parsed one by one so that one of a kind this version cannot read does not spoil the
/// rest.
#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// The RS256 and P-256 ES256 signing keys that have a `kid`; the rest is skipped.
fn usable_keys(raw: Vec<serde_json::Value>) -> KeySet {
    let mut keys = KeySet::new();
    for value in raw {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match (&jwk.algorithm, &jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
                if p.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        match DecodingKey::from_jwk(&jwk) {
            Ok(key) => {
                keys.insert(kid, Key { key, algorithm });
            }
            Err(e) => tracing::warn!(kid, error = %e, "skipping an unreadable key of the JWK set"),
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_rs256_and_p256_signing_keys_with_a_kid_are_kept() {
        let rsa = json!({"kty": "RSA", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"});
        let keys = usable_keys(vec![
            json!({"kid": "plain", "kty": "RSA", "n": rsa["n"], "e": rsa["e"]}),
            json!({"kid": "rs256", "alg": "RS256", "use": "sig", "kty": "RSA", "n": rsa["n"], "e": rsa["e"]}),
            json!({"kid": "enc", "use": "enc", "kty": "RSA", "n": rsa["n"], "e": rsa["e"]}),
            json!({"kid": "rs512", "alg": "RS512", "kty": "RSA", "n": rsa["n"], "e": rsa["e"]}),
            json!({"kty": "RSA", "n": rsa["n"], "e": rsa["e"]}),
            json!({"kid": "hmac", "kty": "oct", "k": "c2VjcmV0"}),
            json!({"kid": "weird", "kty": "something-new"}),
        ]);
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["plain", "rs256"]);
        assert!(keys.values().all(|k| k.algorithm == Algorithm::RS256));
    }
}
