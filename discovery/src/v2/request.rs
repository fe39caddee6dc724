//! A v2 keys request as etcd's `parseKeyRequest` reads it: the query string
//! and a form body, with the same validation and the same error codes.
use std::collections::HashMap;

use super::error::{Code, V2Error};

/// The parameters of one `/v2/keys` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRequest {
    pub path: String,
    pub value: String,
    pub dir: bool,
    pub prev_value: Option<String>,
    pub prev_index: u64,
    pub prev_exist: Option<bool>,
    pub wait: bool,
    pub wait_index: u64,
    pub recursive: bool,
    pub sorted: bool,
    pub quorum: bool,
    pub stream: bool,
    pub ttl: Option<u64>,
    pub refresh: bool,
    pub no_value_on_success: bool,
}

/// Form values: every value of each name, first the body's then the query's
/// (Go's `Request.ParseForm` order; `FormValue` takes the first).
pub type Form = HashMap<String, Vec<String>>;

pub fn parse_form(query: &str, body: &[u8]) -> Form {
    let mut form: Form = HashMap::new();
    for (k, v) in form_urlencoded::parse(body).chain(form_urlencoded::parse(query.as_bytes())) {
        form.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    form
}

/// Go's `strconv.ParseBool`.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn first<'a>(form: &'a Form, k: &str) -> Option<&'a str> {
    form.get(k).and_then(|v| v.first()).map(String::as_str)
}

fn get_bool(form: &Form, k: &str) -> Result<bool, V2Error> {
    match first(form, k) {
        None => Ok(false),
        Some(v) => go_bool(v).ok_or_else(|| {
            V2Error::request(Code::InvalidField, format!("invalid value for {k:?}"))
        }),
    }
}

fn get_u64(form: &Form, k: &str) -> Result<u64, V2Error> {
    match first(form, k) {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| V2Error::request(Code::IndexNaN, format!("invalid value for {k:?}"))),
    }
}

/// Reads a request for `path` (already percent-decoded, after `/v2/keys`).
pub fn parse(method: &str, path: &str, form: &Form) -> Result<KeyRequest, V2Error> {
    let mut r = KeyRequest {
        path: super::node::clean(path),
        prev_index: get_u64(form, "prevIndex")?,
        wait_index: get_u64(form, "waitIndex")?,
        recursive: get_bool(form, "recursive")?,
        sorted: get_bool(form, "sorted")?,
        wait: get_bool(form, "wait")?,
        dir: get_bool(form, "dir")?,
        quorum: get_bool(form, "quorum")?,
        stream: get_bool(form, "stream")?,
        ..KeyRequest::default()
    };
    if r.wait && method != "GET" {
        return Err(V2Error::request(
            Code::InvalidField,
            r#""wait" can only be used with GET requests"#,
        ));
    }
    if let Some(pv) = first(form, "prevValue") {
        if pv.is_empty() {
            return Err(V2Error::request(
                Code::PrevValueRequired,
                r#""prevValue" cannot be empty"#,
            ));
        }
        r.prev_value = Some(pv.to_string());
    }
    r.no_value_on_success = get_bool(form, "noValueOnSuccess")?;
    if let Some(t) = first(form, "ttl").filter(|t| !t.is_empty()) {
        r.ttl = Some(
            t.parse()
                .map_err(|_| V2Error::request(Code::TtlNaN, r#"invalid value for "ttl""#))?,
        );
    }
    if form.contains_key("prevExist") {
        r.prev_exist =
            Some(get_bool(form, "prevExist").map_err(|_| {
                V2Error::request(Code::InvalidField, "invalid value for prevExist")
            })?);
    }
    if form.contains_key("refresh") {
        r.refresh = get_bool(form, "refresh")
            .map_err(|_| V2Error::request(Code::InvalidField, "invalid value for refresh"))?;
        if r.refresh {
            if first(form, "value").is_some_and(|v| !v.is_empty()) {
                return Err(V2Error::request(
                    Code::RefreshValue,
                    "A value was provided on a refresh",
                ));
            }
            if r.ttl.is_none() {
                return Err(V2Error::request(
                    Code::RefreshTtlRequired,
                    "No TTL value set",
                ));
            }
        }
    }
    r.value = first(form, "value").unwrap_or("").to_string();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, query: &str, body: &str) -> Result<KeyRequest, V2Error> {
        parse(method, "/foo", &parse_form(query, body.as_bytes()))
    }

    #[test]
    fn body_before_query() {
        let r = req("PUT", "value=q&ttl=5", "value=b").unwrap();
        assert_eq!(r.value, "b");
        assert_eq!(r.ttl, Some(5));
        assert_eq!(r.path, "/foo");
    }

    #[test]
    fn errors_as_etcd() {
        let e = req("PUT", "ttl=abc", "").unwrap_err();
        assert_eq!(
            (e.code, e.cause.as_str()),
            (202, r#"invalid value for "ttl""#)
        );
        let e = req("PUT", "prevExist=maybe", "").unwrap_err();
        assert_eq!(
            (e.code, e.cause.as_str()),
            (209, "invalid value for prevExist")
        );
        let e = req("PUT", "refresh=true&ttl=3", "value=z").unwrap_err();
        assert_eq!(e.code, 211);
        let e = req("PUT", "refresh=true", "").unwrap_err();
        assert_eq!(e.code, 212);
        let e = req("PUT", "prevValue=", "").unwrap_err();
        assert_eq!(e.code, 201);
        let e = req("PUT", "wait=true", "").unwrap_err();
        assert_eq!(e.code, 209);
        let e = req("GET", "waitIndex=x", "").unwrap_err();
        assert_eq!(
            (e.code, e.cause.as_str()),
            (203, r#"invalid value for "waitIndex""#)
        );
        // An empty ttl is no ttl.
        assert_eq!(req("PUT", "ttl=", "").unwrap().ttl, None);
    }
}
