//! Who is asking: auth tokens (etcd's simple tokens and JWT), client
//! certificate names, and password hashing. The auth store itself (users,
//! roles, permissions, the decisions) is `cairn_mvcc::auth`; this module only
//! turns a request's metadata into an [`AuthInfo`].
//!
//! - **simple** (`--auth-token simple`, the default): `Authenticate` proposes
//!   a random 16-letter prefix; every member, applying the entry at index N,
//!   records the token `<prefix>.N` for the user. A token lives
//!   `--auth-token-ttl` seconds (300) after its last use, and dies with its
//!   user, a new password, or `auth disable`. A member that has not applied
//!   index N yet waits for it before deciding.
//! - **jwt** (`--auth-token jwt,pub-key=P,priv-key=K,sign-method=RS256,ttl=5m`):
//!   a signed token carrying `username`, `revision` and `exp`, checked by
//!   signature on any member; a token issued before an auth change is
//!   refused with "revision of auth store is old" and the client
//!   re-authenticates.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_mvcc::auth::AuthInfo;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;

/// `--bcrypt-cost` default (etcd's, bcrypt.DefaultCost).
pub const DEFAULT_BCRYPT_COST: u32 = 10;
/// `--auth-token-ttl` default.
pub const DEFAULT_SIMPLE_TTL: Duration = Duration::from_secs(300);
/// How long a member waits to apply the entry a simple token names.
const TOKEN_INDEX_WAIT: Duration = Duration::from_secs(5);
/// Sweep expired simple tokens when this many are held.
const SWEEP_AT: usize = 4096;

/// The verified client certificate's common name, which the TLS listener
/// records for each request (`serve::TlsConnectInfo`): etcd's CN-as-user
/// with `--client-cert-auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertName(pub String);

pub struct Jwt {
    alg: Algorithm,
    sign: Option<EncodingKey>,
    verify: DecodingKey,
    ttl: Duration,
}

pub enum TokenKind {
    Simple,
    Jwt(Box<Jwt>),
}

/// Parses `--auth-token`: `simple`, or `jwt,` followed by `key=value`
/// options (`pub-key`, `priv-key`, `sign-method`, `ttl`), reading key files.
pub fn parse_token_kind(spec: &str) -> Result<TokenKind, String> {
    let mut parts = spec.split(',');
    let kind = parts.next().unwrap_or_default().trim();
    let mut opts: HashMap<&str, &str> = HashMap::new();
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("--auth-token {spec:?}: option {p:?} is not key=value"))?;
        if opts.insert(k.trim(), v.trim()).is_some() {
            return Err(format!("--auth-token {spec:?}: option {k:?} given twice"));
        }
    }
    match kind {
        "simple" => {
            if let Some(k) = opts.keys().next() {
                return Err(format!(
                    "--auth-token {spec:?}: simple tokens take no option ({k:?})"
                ));
            }
            Ok(TokenKind::Simple)
        }
        "jwt" => parse_jwt(spec, &opts).map(|j| TokenKind::Jwt(Box::new(j))),
        other => Err(format!(
            "--auth-token {spec:?}: unknown token type {other:?} (expected simple or jwt)"
        )),
    }
}

fn parse_jwt(spec: &str, opts: &HashMap<&str, &str>) -> Result<Jwt, String> {
    let bad = |m: String| format!("--auth-token {spec:?}: {m}");
    for k in opts.keys() {
        if !["pub-key", "priv-key", "sign-method", "ttl"].contains(k) {
            return Err(bad(format!("unknown jwt option {k:?}")));
        }
    }
    let method = opts
        .get("sign-method")
        .ok_or_else(|| bad("sign-method is required".into()))?;
    let alg: Algorithm = method
        .parse()
        .map_err(|_| bad(format!("unknown sign-method {method:?}")))?;
    let ttl = match opts.get("ttl") {
        Some(t) => crate::config::parse_duration(t)
            .ok_or_else(|| bad(format!("ttl {t:?} is not a duration")))?,
        None => Duration::from_secs(300),
    };
    let read = |k: &str| -> Result<Option<Vec<u8>>, String> {
        match opts.get(k) {
            None => Ok(None),
            Some(path) => std::fs::read(path)
                .map(Some)
                .map_err(|e| bad(format!("{k} {path}: {e}"))),
        }
    };
    let (public, private) = (read("pub-key")?, read("priv-key")?);
    let keyerr = |k: &str, e: jsonwebtoken::errors::Error| bad(format!("{k}: {e}"));
    let (sign, verify) = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = private
                .or(public)
                .ok_or_else(|| bad("an HMAC method needs priv-key (the secret)".into()))?;
            (
                Some(EncodingKey::from_secret(&secret)),
                DecodingKey::from_secret(&secret),
            )
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            let public = public.ok_or_else(|| bad("pub-key is required".into()))?;
            let sign = private
                .map(|p| EncodingKey::from_rsa_pem(&p).map_err(|e| keyerr("priv-key", e)))
                .transpose()?;
            let verify = DecodingKey::from_rsa_pem(&public).map_err(|e| keyerr("pub-key", e))?;
            (sign, verify)
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let public = public.ok_or_else(|| bad("pub-key is required".into()))?;
            let sign = private
                .map(|p| EncodingKey::from_ec_pem(&p).map_err(|e| keyerr("priv-key", e)))
                .transpose()?;
            let verify = DecodingKey::from_ec_pem(&public).map_err(|e| keyerr("pub-key", e))?;
            (sign, verify)
        }
        Algorithm::EdDSA => {
            let public = public.ok_or_else(|| bad("pub-key is required".into()))?;
            let sign = private
                .map(|p| EncodingKey::from_ed_pem(&p).map_err(|e| keyerr("priv-key", e)))
                .transpose()?;
            let verify = DecodingKey::from_ed_pem(&public).map_err(|e| keyerr("pub-key", e))?;
            (sign, verify)
        }
    };
    let jwt = Jwt {
        alg,
        sign,
        verify,
        ttl,
    };
    // A key pair that does not match is found now, not at the first login.
    if jwt.sign.is_some() {
        let t = jwt
            .sign_token("cairn-self-check", 1)
            .map_err(|e| bad(format!("signing with priv-key failed: {e}")))?;
        if jwt.verify_token(&t).is_none() {
            return Err(bad("pub-key and priv-key do not match".into()));
        }
    }
    Ok(jwt)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

impl Jwt {
    fn sign_token(&self, user: &str, revision: u64) -> Result<String, String> {
        let key = self
            .sign
            .as_ref()
            .ok_or("token signing attempted with verify-only key")?;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            + self.ttl.as_secs().max(1);
        jsonwebtoken::encode(
            &Header::new(self.alg),
            &Claims {
                username: user.to_owned(),
                revision,
                exp,
            },
            key,
        )
        .map_err(|e| e.to_string())
    }

    fn verify_token(&self, token: &str) -> Option<AuthInfo> {
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        v.required_spec_claims = ["exp".to_string()].into_iter().collect();
        let data = jsonwebtoken::decode::<Claims>(token, &self.verify, &v).ok()?;
        Some(AuthInfo {
            user: data.claims.username,
            revision: data.claims.revision,
        })
    }
}

/// The tokens this member knows.
pub struct Tokens {
    kind: TokenKind,
    ttl: Duration,
    /// simple token -> (user, expiry)
    simple: Mutex<HashMap<String, (String, Instant)>>,
    pub bcrypt_cost: u32,
}

impl Tokens {
    pub fn new(kind: TokenKind, ttl: Duration, bcrypt_cost: u32) -> Tokens {
        Tokens {
            kind,
            ttl: if ttl.is_zero() {
                DEFAULT_SIMPLE_TTL
            } else {
                ttl
            },
            simple: Mutex::new(HashMap::new()),
            bcrypt_cost,
        }
    }

    pub fn is_simple(&self) -> bool {
        matches!(self.kind, TokenKind::Simple)
    }

    /// A fresh simple-token prefix: 16 random letters.
    pub fn prefix() -> String {
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut rng = rand::rng();
        (0..16)
            .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
            .collect()
    }

    /// Records a simple token an applied `Authenticate` issued.
    pub fn issued(&self, user: String, token: String) {
        if !self.is_simple() {
            return;
        }
        let now = Instant::now();
        let mut m = self.simple.lock().expect("tokens lock");
        if m.len() >= SWEEP_AT {
            m.retain(|_, (_, exp)| *exp > now);
        }
        m.insert(token, (user, now + self.ttl));
    }

    pub fn invalidate_user(&self, user: &str) {
        self.simple
            .lock()
            .expect("tokens lock")
            .retain(|_, (u, _)| u != user);
    }

    pub fn clear(&self) {
        self.simple.lock().expect("tokens lock").clear();
    }

    /// The user of a live simple token, whose lifetime starts again.
    fn simple_user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut m = self.simple.lock().expect("tokens lock");
        match m.get_mut(token) {
            Some((user, exp)) if *exp > now => {
                *exp = now + self.ttl;
                Some(user.clone())
            }
            Some(_) => {
                m.remove(token);
                None
            }
            None => None,
        }
    }

    /// A JWT for `user` at auth `revision` (None with simple tokens).
    pub fn sign(&self, user: &str, revision: u64) -> Option<Result<String, String>> {
        match &self.kind {
            TokenKind::Simple => None,
            TokenKind::Jwt(j) => Some(j.sign_token(user, revision)),
        }
    }
}

/// The token a request carries: gRPC metadata `token` (etcd's clients), or
/// `authorization` (the JSON gateway's header), with an optional `Bearer `.
pub fn token_of(md: &tonic::metadata::MetadataMap) -> Option<String> {
    let v = md.get("token").or_else(|| md.get("authorization"))?;
    let s = v.to_str().ok()?.trim();
    let s = s.strip_prefix("Bearer ").unwrap_or(s);
    (!s.is_empty()).then(|| s.to_owned())
}

impl crate::server::Server {
    /// Who a request runs as (etcd's `AuthInfoFromCtx`, then the client
    /// certificate's CN). Anonymous when auth is off; an unknown or expired
    /// token is refused with "invalid auth token".
    pub async fn caller(
        &self,
        md: &tonic::metadata::MetadataMap,
        cert: Option<&ClientCertName>,
    ) -> Result<AuthInfo, tonic::Status> {
        let auth = self.mvcc.auth();
        if !auth.enabled {
            return Ok(AuthInfo::default());
        }
        let invalid = || crate::api::status::auth(cairn_mvcc::auth::AuthError::InvalidAuthToken);
        if let Some(token) = token_of(md) {
            return match &self.tokens.kind {
                TokenKind::Jwt(j) => j.verify_token(&token).ok_or_else(invalid),
                TokenKind::Simple => {
                    let index = token
                        .rsplit_once('.')
                        .and_then(|(_, i)| i.parse::<u64>().ok())
                        .ok_or_else(invalid)?;
                    self.wait_applied(index, TOKEN_INDEX_WAIT).await;
                    let user = self.tokens.simple_user(&token).ok_or_else(invalid)?;
                    Ok(AuthInfo {
                        user,
                        revision: self.mvcc.auth().revision,
                    })
                }
            };
        }
        if let Some(ClientCertName(cn)) = cert {
            return Ok(AuthInfo {
                user: cn.clone(),
                revision: auth.revision,
            });
        }
        Ok(AuthInfo::default())
    }

    /// Waits (at most `limit`) until this member has applied `index`.
    async fn wait_applied(&self, index: u64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.mvcc.applied_index() < index && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Who asks, from a tonic request (gRPC or the gateway).
pub async fn caller_of<T>(
    server: &crate::server::Server,
    r: &tonic::Request<T>,
) -> Result<AuthInfo, tonic::Status> {
    server
        .caller(r.metadata(), cert_name(r.extensions()).as_ref())
        .await
}

/// The client certificate's name a TLS connection put in the request.
pub fn cert_name(ext: &http::Extensions) -> Option<ClientCertName> {
    ext.get::<crate::serve::TlsConnectInfo>()
        .and_then(|i| i.cert_name.clone())
}

/// A bcrypt hash of `password` at `cost`, off the async threads.
pub async fn hash_password(password: String, cost: u32) -> Result<String, tonic::Status> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
        .await
        .map_err(crate::api::status::internal)?
        .map_err(crate::api::status::internal)
}

/// Whether `password` matches the stored bcrypt hash.
pub async fn verify_password(password: String, hash: Vec<u8>) -> bool {
    tokio::task::spawn_blocking(move || {
        std::str::from_utf8(&hash)
            .ok()
            .is_some_and(|h| bcrypt::verify(password, h).unwrap_or(false))
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_specs_are_parsed_and_bad_ones_named() {
        assert!(matches!(parse_token_kind("simple"), Ok(TokenKind::Simple)));
        for (spec, needle) in [
            ("bogus", "unknown token type"),
            ("simple,ttl=5", "take no option"),
            ("jwt,sign-method=RS256", "pub-key is required"),
            ("jwt,pub-key=/nonexistent,sign-method=RS256", "/nonexistent"),
            ("jwt,sign-method=XX1", "unknown sign-method"),
            ("jwt,foo", "not key=value"),
            ("jwt,colour=red,sign-method=HS256", "unknown jwt option"),
        ] {
            let e = parse_token_kind(spec).err().unwrap_or_default();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn hmac_jwt_round_trips_and_rejects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"0123456789abcdef").unwrap();
        let kind = parse_token_kind(&format!(
            "jwt,priv-key={},sign-method=HS256",
            secret.display()
        ))
        .unwrap();
        let TokenKind::Jwt(j) = kind else {
            panic!("not jwt")
        };
        let t = j.sign_token("alice", 7).unwrap();
        assert_eq!(
            j.verify_token(&t),
            Some(AuthInfo {
                user: "alice".into(),
                revision: 7
            })
        );
        let mut bad = t.clone();
        bad.pop();
        bad.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(j.verify_token(&bad), None);
    }

    #[test]
    fn simple_tokens_expire_and_die_with_their_user() {
        let t = Tokens::new(TokenKind::Simple, Duration::from_millis(30), 4);
        t.issued("alice".into(), "abc.1".into());
        t.issued("bob".into(), "def.2".into());
        assert_eq!(t.simple_user("abc.1").as_deref(), Some("alice"));
        t.invalidate_user("alice");
        assert_eq!(t.simple_user("abc.1"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.simple_user("def.2"), None, "expired");
        assert_eq!(Tokens::prefix().len(), 16);
    }
}
