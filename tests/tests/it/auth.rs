//! Auth and RBAC: users, roles, key-range permissions on every path, the
//! root rules, tokens (simple and JWT), the JSON gateway's Authorization
//! header. Driven by etcdctl and the etcd-client crate; the same cases run
//! against Debian's etcd 3.4 (`CONFORMANCE_SUBJECT=etcd`), except the few
//! checks etcd added after 3.4 (lease permissions, Status needing a user),
//! which are asserted for cairn only and say so.
use std::time::Duration;

use cairn_tests::{Subject, SubjectOptions, subject_is_etcd, subject_kind};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Permission, PutOptions,
    Txn, TxnOp, WatchOptions,
};
use tonic::Code;

use crate::{assert_grpc_error, status_of};

const ROOT_PW: &str = "rootpw";
const ALICE_PW: &str = "alicepw";

/// etcdctl, failing the test with its output unless it succeeds.
#[track_caller]
fn ctl(s: &Subject, args: &[&str]) -> String {
    let out = s.etcdctl(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "etcdctl {args:?} failed: {text}");
    text
}

/// etcdctl expected to fail; its stderr.
#[track_caller]
fn ctl_err(s: &Subject, args: &[&str]) -> String {
    let out = s.etcdctl(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "etcdctl {args:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

/// root (with the root role), alice (role `r`: READ on `ro`, READWRITE on
/// the prefix `a/`), auth enabled: the layout most cases start from.
fn with_users(s: &Subject) {
    ctl(s, &["user", "add", &format!("root:{ROOT_PW}")]);
    ctl(s, &["user", "add", &format!("alice:{ALICE_PW}")]);
    ctl(s, &["role", "add", "r"]);
    ctl(s, &["role", "grant-permission", "r", "read", "ro"]);
    ctl(
        s,
        &[
            "role",
            "grant-permission",
            "r",
            "readwrite",
            "--prefix",
            "a/",
        ],
    );
    ctl(s, &["user", "grant-role", "alice", "r"]);
    // etcdctl adds the root role and grants it to root when needed.
    assert!(ctl(s, &["auth", "enable"]).contains("Authentication Enabled"));
}

async fn client_as(s: &Subject, user: &str, password: &str) -> Client {
    let opts = ConnectOptions::new()
        .with_user(user, password)
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(30));
    Client::connect([s.endpoint()], Some(opts))
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

const DENIED: &str = "etcdserver: permission denied";
const NO_USER: &str = "etcdserver: user name is empty";

#[tokio::test]
async fn etcdctl_users_roles_and_auth_enable_disable() {
    let s = Subject::start().await;
    ctl(&s, &["put", "ro", "v0"]);
    // Enabling without a root user is refused.
    let e = ctl_err(&s, &["auth", "enable"]);
    assert!(e.contains("root user does not exist"), "{e}");
    with_users(&s);
    let root = format!("--user=root:{ROOT_PW}");
    let alice = format!("--user=alice:{ALICE_PW}");

    // Anonymous requests are refused once auth is on.
    assert!(ctl_err(&s, &["get", "ro"]).contains(NO_USER));
    assert!(ctl_err(&s, &["put", "x", "y"]).contains(NO_USER));
    // Wrong password, unknown user.
    let e = ctl_err(&s, &["--user=alice:nope", "get", "ro"]);
    assert!(
        e.contains("authentication failed, invalid user ID or password"),
        "{e}"
    );
    let e = ctl_err(&s, &["--user=bob:x", "get", "ro"]);
    assert!(e.contains("authentication failed"), "{e}");

    // alice reads ro, may not write it; owns a/.
    assert!(ctl(&s, &[&alice, "get", "ro"]).contains("v0"));
    assert!(ctl_err(&s, &[&alice, "put", "ro", "v1"]).contains(DENIED));
    ctl(&s, &[&alice, "put", "a/1", "one"]);
    assert!(ctl(&s, &[&alice, "get", "--prefix", "a/"]).contains("one"));
    assert!(ctl_err(&s, &[&alice, "get", "--prefix", "a"]).contains(DENIED));

    // Admin-only listings; a user may read its own record.
    let users = ctl(&s, &[&root, "user", "list"]);
    assert!(users.contains("alice") && users.contains("root"), "{users}");
    assert!(ctl_err(&s, &[&alice, "user", "list"]).contains(DENIED));
    assert!(ctl(&s, &[&alice, "user", "get", "alice"]).contains("Roles: r"));
    assert!(ctl_err(&s, &[&alice, "user", "get", "root"]).contains(DENIED));
    let role = ctl(&s, &[&alice, "role", "get", "r"]);
    assert!(role.contains("[a/, a0) (prefix a/)"), "{role}");
    let root_role = ctl(&s, &[&root, "role", "get", "root"]);
    if !subject_is_etcd() {
        // etcd 3.5 shows the root role's implicit permission; 3.4 none.
        assert!(root_role.contains("<open ended>"), "{root_role}");
    }

    // root is protected while auth is on.
    let e = ctl_err(&s, &[&root, "user", "delete", "root"]);
    assert!(e.contains("invalid auth management"), "{e}");
    let e = ctl_err(&s, &[&root, "user", "revoke-role", "root", "root"]);
    assert!(e.contains("invalid auth management"), "{e}");
    let e = ctl_err(&s, &[&root, "role", "delete", "root"]);
    assert!(e.contains("invalid auth management"), "{e}");
    // alice may not switch auth off.
    assert!(ctl_err(&s, &[&alice, "auth", "disable"]).contains(DENIED));

    // Revoking the permission takes effect at once.
    ctl(&s, &[&root, "role", "revoke-permission", "r", "ro"]);
    assert!(ctl_err(&s, &[&alice, "get", "ro"]).contains(DENIED));
    let e = ctl_err(&s, &[&root, "role", "revoke-permission", "r", "ro"]);
    assert!(e.contains("permission is not granted to the role"), "{e}");
    let e = ctl_err(&s, &[&root, "user", "revoke-role", "alice", "nope"]);
    assert!(e.contains("role is not granted to the user"), "{e}");
    let e = ctl_err(&s, &[&root, "user", "grant-role", "alice", "nope"]);
    assert!(e.contains("role name not found"), "{e}");
    let e = ctl_err(&s, &[&root, "user", "add", &format!("alice:{ALICE_PW}")]);
    assert!(e.contains("user name already exists"), "{e}");

    assert!(ctl(&s, &[&root, "auth", "disable"]).contains("Authentication Disabled"));
    ctl(&s, &["put", "x", "y"]);
    assert!(ctl(&s, &["get", "ro"]).contains("v0"));
    // With auth off, Authenticate says so (etcd's clients then go on
    // without a token, as etcdctl does here).
    assert!(ctl(&s, &[&alice, "get", "ro"]).contains("v0"));
    let (code, body) = cairn_tests::http_request(
        ("127.0.0.1", s.client_port()),
        "POST",
        "/v3/auth/authenticate",
        Some(&format!(r#"{{"name":"alice","password":"{ALICE_PW}"}}"#)),
    );
    assert_eq!(code, 412, "{body}"); // FailedPrecondition
    assert!(body.contains("authentication is not enabled"), "{body}");
}

#[tokio::test]
async fn permissions_are_checked_on_every_kv_path() {
    let s = Subject::start().await;
    ctl(&s, &["put", "ro", "v0"]);
    ctl(&s, &["put", "b/1", "x"]);
    with_users(&s);
    let mut c = client_as(&s, "alice", ALICE_PW).await;
    let mut root = client_as(&s, "root", ROOT_PW).await;

    // Put needs WRITE; prev_kv also READ (which a/ grants).
    c.put("a/1", "v", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_grpc_error(c.put("ro", "v", None).await, Code::PermissionDenied, DENIED);
    // Delete of a range reaching outside a/ is refused whole.
    assert_grpc_error(
        c.delete("a/", Some(DeleteOptions::new().with_range("b/2")))
            .await,
        Code::PermissionDenied,
        DENIED,
    );
    c.delete("a/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    // A range read needs the whole range.
    assert_grpc_error(
        c.get("a/", Some(GetOptions::new().with_from_key())).await,
        Code::PermissionDenied,
        DENIED,
    );
    assert_grpc_error(
        c.get("b/1", Some(GetOptions::new().with_serializable()))
            .await,
        Code::PermissionDenied,
        DENIED,
    );
    // Txn: compares need READ, every branch is checked whichever runs.
    let denied_branch = Txn::new()
        .when([Compare::value("a/x", CompareOp::Equal, "nope")])
        .and_then([TxnOp::put("a/x", "1", None)])
        .or_else([TxnOp::put("b/1", "stolen", None)]);
    assert_grpc_error(c.txn(denied_branch).await, Code::PermissionDenied, DENIED);
    let denied_compare = Txn::new()
        .when([Compare::value("b/1", CompareOp::Equal, "x")])
        .and_then([TxnOp::put("a/x", "1", None)]);
    assert_grpc_error(c.txn(denied_compare).await, Code::PermissionDenied, DENIED);
    if !subject_is_etcd() {
        // etcd 3.4.23 does not look inside nested txns and lets this delete
        // through (fixed in later releases); cairn checks every level.
        let nested = Txn::new().and_then([TxnOp::txn(
            Txn::new().and_then([TxnOp::delete("b/1", None)]),
        )]);
        assert_grpc_error(c.txn(nested).await, Code::PermissionDenied, DENIED);
    }
    let ok = Txn::new()
        .when([Compare::value("ro", CompareOp::Equal, "v0")])
        .and_then([TxnOp::put("a/x", "1", None), TxnOp::get("ro", None)]);
    assert!(c.txn(ok).await.unwrap().succeeded());
    // Nothing refused was written.
    let b = root.get("b/1", None).await.unwrap();
    assert_eq!(b.kvs()[0].value(), b"x");
    if !subject_is_etcd() {
        // Compaction is for admins (etcd 3.5; 3.4 lets any user compact).
        assert_grpc_error(c.compact(2, None).await, Code::PermissionDenied, DENIED);
    }
    root.compact(2, None).await.unwrap();
    // Member changes too.
    assert_grpc_error(
        c.member_add(["http://127.0.0.1:1"], None).await,
        Code::PermissionDenied,
        DENIED,
    );
}

#[tokio::test]
async fn watches_need_read_permission_when_created() {
    let s = Subject::start().await;
    with_users(&s);
    let mut c = client_as(&s, "alice", ALICE_PW).await;
    let mut root = client_as(&s, "root", ROOT_PW).await;

    let mut denied = c
        .watch("b/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), denied.message())
        .await
        .expect("an answer to the refused create")
        .unwrap()
        .expect("a watch response");
    assert!(first.canceled(), "{first:?}");
    assert!(
        first.cancel_reason().contains("permission denied"),
        "{first:?}"
    );

    let mut allowed = c
        .watch("a/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    root.put("a/k", "v", None).await.unwrap();
    let events = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = allowed.message().await.unwrap().expect("stream open");
            if !m.events().is_empty() {
                return m;
            }
        }
    })
    .await
    .expect("the event arrives");
    assert_eq!(events.events()[0].kv().unwrap().key(), b"a/k");
}

#[tokio::test]
async fn lease_revoke_needs_write_on_every_attached_key() {
    let s = Subject::start().await;
    with_users(&s);
    let mut c = client_as(&s, "alice", ALICE_PW).await;
    let mut root = client_as(&s, "root", ROOT_PW).await;

    // Her own lease on her own key: hers to revoke.
    let mine = c.lease_grant(60, None).await.unwrap().id();
    c.put("a/l", "v", Some(PutOptions::new().with_lease(mine)))
        .await
        .unwrap();
    c.lease_revoke(mine).await.unwrap();
    assert!(c.get("a/l", None).await.unwrap().kvs().is_empty());

    // A lease holding a key she may not write.
    let theirs = root.lease_grant(60, None).await.unwrap().id();
    root.put("b/l", "v", Some(PutOptions::new().with_lease(theirs)))
        .await
        .unwrap();
    assert_grpc_error(c.lease_revoke(theirs).await, Code::PermissionDenied, DENIED);
    // Attaching her key to it is refused as well.
    assert_grpc_error(
        c.put("a/m", "v", Some(PutOptions::new().with_lease(theirs)))
            .await,
        Code::PermissionDenied,
        DENIED,
    );
    if !subject_is_etcd() {
        // etcd 3.5 added these checks; 3.4 answers them.
        assert_grpc_error(
            c.lease_time_to_live(theirs, None).await,
            Code::PermissionDenied,
            DENIED,
        );
        // The client waits for the first renewal's answer.
        match c.lease_keep_alive(theirs).await {
            Err(etcd_client::Error::GRpcStatus(s)) => {
                assert_eq!(s.code(), Code::PermissionDenied, "{s:?}")
            }
            Err(e) => panic!("expected permission denied, got {e}"),
            Ok((_, mut answers)) => {
                let answer = answers.message().await;
                assert_eq!(status_of(answer).code(), Code::PermissionDenied);
            }
        }
    }
    root.lease_revoke(theirs).await.unwrap();
}

#[tokio::test]
async fn a_new_password_or_a_deleted_user_voids_tokens() {
    let s = Subject::start().await;
    with_users(&s);
    let mut c = client_as(&s, "alice", ALICE_PW).await;
    let mut root = client_as(&s, "root", ROOT_PW).await;
    c.put("a/1", "v", None).await.unwrap();
    root.user_change_password("alice", "newpw").await.unwrap();
    assert_grpc_error(
        c.get("a/1", None).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    let mut c = client_as(&s, "alice", "newpw").await;
    c.get("a/1", None).await.unwrap();
    root.user_delete("alice").await.unwrap();
    assert_grpc_error(
        c.get("a/1", None).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    if !subject_is_etcd() {
        // Auth store changes bump the revision AuthStatus reports (etcd
        // 3.5's RPC; 3.4 has none).
        let token = login(&s, "root", ROOT_PW);
        let revision = || {
            let (code, body) = cairn_tests::http_request_with(
                ("127.0.0.1", s.client_port()),
                "POST",
                "/v3/auth/status",
                Some("{}"),
                &[("Authorization", &token)],
            );
            assert_eq!(code, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["enabled"], true, "{body}");
            v["authRevision"].as_str().unwrap().parse::<u64>().unwrap()
        };
        let before = revision();
        root.role_add("another").await.unwrap();
        assert_eq!(revision(), before + 1);
    } else {
        root.role_add("another").await.unwrap();
    }
    // Permissions on a role grant as etcd's do: a range, shown back.
    root.role_grant_permission("another", Permission::read_write("k").with_prefix())
        .await
        .unwrap();
    let perms = root.role_get("another").await.unwrap();
    assert_eq!(perms.permissions().len(), 1);
    assert_eq!(perms.permissions()[0].range_end(), b"l");
}

/// A token from the gateway's `/v3/auth/authenticate`.
fn login(s: &Subject, user: &str, password: &str) -> String {
    let (code, body) = cairn_tests::http_request(
        ("127.0.0.1", s.client_port()),
        "POST",
        "/v3/auth/authenticate",
        Some(&format!(r#"{{"name":"{user}","password":"{password}"}}"#)),
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["token"].as_str().expect("a token").to_string()
}

#[tokio::test]
async fn the_json_gateway_takes_the_token_in_the_authorization_header() {
    let s = Subject::start().await;
    ctl(&s, &["put", "ro", "v0"]);
    with_users(&s);
    let addr = ("127.0.0.1", s.client_port());
    let token = login(&s, "alice", ALICE_PW);
    let range = r#"{"key":"cm8="}"#; // "ro"
    let (code, body) = cairn_tests::http_request_with(
        addr,
        "POST",
        "/v3/kv/range",
        Some(range),
        &[("Authorization", &token)],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("djA="), "{body}"); // "v0"
    let (code, body) = cairn_tests::http_request(addr, "POST", "/v3/kv/range", Some(range));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("user name is empty"), "{body}");
    let (code, body) = cairn_tests::http_request_with(
        addr,
        "POST",
        "/v3/kv/put",
        Some(r#"{"key":"cm8=","value":"eA=="}"#),
        &[("Authorization", &token)],
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("permission denied"), "{body}");
    let (code, body) = cairn_tests::http_request(
        addr,
        "POST",
        "/v3/auth/authenticate",
        Some(r#"{"name":"alice","password":"wrong"}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("authentication failed"), "{body}");
}

/// RSA key pair for JWT, made by openssl.
fn rsa_keys(dir: &std::path::Path) -> (String, String) {
    let private = dir.join("jwt.key");
    let public = dir.join("jwt.pub");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048")
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl genrsa");
    let ok = std::process::Command::new("openssl")
        .args(["rsa", "-in"])
        .arg(&private)
        .args(["-pubout", "-out"])
        .arg(&public)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "openssl rsa -pubout");
    (public.display().to_string(), private.display().to_string())
}

#[tokio::test]
async fn jwt_tokens_are_signed_and_checked_by_signature() {
    let keys = tempfile::tempdir().unwrap();
    let (public, private) = rsa_keys(keys.path());
    let mut o = SubjectOptions::new(subject_kind());
    o.extra_args = vec![
        "--auth-token".into(),
        format!("jwt,pub-key={public},priv-key={private},sign-method=RS256,ttl=10m"),
    ];
    let s = Subject::start_with(o).await;
    with_users(&s);
    let addr = ("127.0.0.1", s.client_port());
    let token = login(&s, "alice", ALICE_PW);
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let (code, body) = cairn_tests::http_request_with(
        addr,
        "POST",
        "/v3/kv/put",
        Some(r#"{"key":"YS8x","value":"eA=="}"#), // a/1
        &[("Authorization", &token)],
    );
    assert_eq!(code, 200, "{body}");
    // A forged token (signature cut) is refused.
    let forged = format!("{}x", &token[..token.len() - 4]);
    let (code, body) = cairn_tests::http_request_with(
        addr,
        "POST",
        "/v3/kv/put",
        Some(r#"{"key":"YS8x","value":"eA=="}"#),
        &[("Authorization", &forged)],
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("invalid auth token"), "{body}");
    // After an auth change the token's revision is old: refused, and a new
    // login works (etcd's clients re-authenticate on this error).
    ctl(&s, &[&format!("--user=root:{ROOT_PW}"), "role", "add", "x"]);
    let (code, body) = cairn_tests::http_request_with(
        addr,
        "POST",
        "/v3/kv/put",
        Some(r#"{"key":"YS8x","value":"eQ=="}"#),
        &[("Authorization", &token)],
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("revision of auth store is old"), "{body}");
    ctl(
        &s,
        &[&format!("--user=alice:{ALICE_PW}"), "put", "a/1", "z"],
    );
}

#[tokio::test]
async fn status_needs_a_user_and_snapshots_need_an_admin() {
    let s = Subject::start().await;
    with_users(&s);
    let mut c = client_as(&s, "alice", ALICE_PW).await;
    let mut anon = s.client().await;
    if !subject_is_etcd() {
        // etcd 3.4.23 answers these to any user; 3.5 and cairn to admins.
        assert_grpc_error(c.hash_kv(0).await, Code::PermissionDenied, DENIED);
        assert_grpc_error(c.defragment().await, Code::PermissionDenied, DENIED);
        // etcd 3.5's requireAuthInfo; 3.4 answers Status to anyone.
        assert_grpc_error(anon.status().await, Code::InvalidArgument, NO_USER);
        c.status().await.unwrap();
        // And the alarm list the same way.
        assert_grpc_error(
            anon.alarm(
                etcd_client::AlarmAction::Get,
                etcd_client::AlarmType::None,
                None,
            )
            .await,
            Code::InvalidArgument,
            NO_USER,
        );
    }
    let mut root = client_as(&s, "root", ROOT_PW).await;
    root.hash_kv(0).await.unwrap();
}
