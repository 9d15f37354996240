//! Basic auth against bcrypt hashes, as exporter-toolkit does it: a
//! password is checked with bcrypt once, and a pair that passed is
//! remembered so that a scrape every few seconds does not cost a bcrypt
//! round each. bcrypt is slow on purpose, so at most two checks run at
//! once: a flood of wrong passwords costs two cores' worth, no more.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
};

use base64::Engine as _;
use tokio::sync::Semaphore;

/// Pairs remembered; past it the memory starts again (a fleet's Prometheus
/// servers use a handful).
const REMEMBERED: usize = 64;
/// bcrypt checks run at once.
const CHECKS_AT_ONCE: usize = 2;

/// Users and their bcrypt hashes.
#[derive(Debug)]
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    passed: Mutex<HashSet<(String, String)>>,
    checks: Semaphore,
    /// Checked against for unknown users, so that they take as long.
    decoy: String,
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> Arc<Self> {
        let decoy = users.values().next().cloned().unwrap_or_default();
        Arc::new(Self {
            users,
            passed: Mutex::default(),
            checks: Semaphore::new(CHECKS_AT_ONCE),
            decoy,
        })
    }

    /// Whether an `Authorization` header value names a user and password.
    pub async fn allows(self: &Arc<Self>, authorization: Option<&str>) -> bool {
        let Some((user, password)) = authorization.and_then(credentials) else {
            return false;
        };
        let pair = (user, password);
        if self
            .passed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&pair)
        {
            return true;
        }
        let Ok(_permit) = self.checks.acquire().await else {
            return false;
        };
        let this = self.clone();
        let (user, password) = pair.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let (hash, known) = match this.users.get(&user) {
                Some(hash) => (hash.as_str(), true),
                None => (this.decoy.as_str(), false),
            };
            bcrypt::verify(&password, hash).unwrap_or(false) && known
        })
        .await
        .unwrap_or(false);
        if ok {
            let mut passed = self.passed.lock().unwrap_or_else(PoisonError::into_inner);
            if passed.len() >= REMEMBERED {
                passed.clear();
            }
            passed.insert(pair);
        }
        ok
    }
}

/// `Basic dXNlcjpwYXNz` → (user, password).
fn credentials(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[tokio::test]
    async fn only_the_right_password_passes() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let auth = BasicAuth::new([("prometheus".to_owned(), hash)].into());
        assert!(auth.allows(Some(&header("prometheus", "secret"))).await);
        // Remembered, and still right.
        assert!(auth.allows(Some(&header("prometheus", "secret"))).await);
        assert!(!auth.allows(Some(&header("prometheus", "wrong"))).await);
        assert!(!auth.allows(Some(&header("nobody", "secret"))).await);
        assert!(!auth.allows(None).await);
        assert!(!auth.allows(Some("Bearer abc")).await);
        assert!(!auth.allows(Some("Basic !!!")).await);
    }
}
