//! etcd v2's error documents: `{"errorCode":100,"message":"Key not found",
//! "cause":"/foo","index":7}` with the HTTP status etcd gives each code.
use serde::Serialize;

/// One v2 error code, with etcd's message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Code {
    KeyNotFound = 100,
    TestFailed = 101,
    NotFile = 102,
    NotDir = 104,
    NodeExist = 105,
    RootReadOnly = 107,
    DirNotEmpty = 108,
    PrevValueRequired = 201,
    TtlNaN = 202,
    IndexNaN = 203,
    InvalidField = 209,
    InvalidForm = 210,
    RefreshValue = 211,
    RefreshTtlRequired = 212,
    RaftInternal = 300,
    LeaderElect = 301,
    EventIndexCleared = 401,
}

impl Code {
    pub fn message(self) -> &'static str {
        match self {
            Code::KeyNotFound => "Key not found",
            Code::TestFailed => "Compare failed",
            Code::NotFile => "Not a file",
            Code::NotDir => "Not a directory",
            Code::NodeExist => "Key already exists",
            Code::RootReadOnly => "Root is read only",
            Code::DirNotEmpty => "Directory not empty",
            Code::PrevValueRequired => "PrevValue is Required in POST form",
            Code::TtlNaN => "The given TTL in POST form is not a number",
            Code::IndexNaN => "The given index in POST form is not a number",
            Code::InvalidField => "Invalid field",
            Code::InvalidForm => "Invalid POST form",
            Code::RefreshValue => "Value provided on refresh",
            Code::RefreshTtlRequired => "A TTL must be provided on refresh",
            Code::RaftInternal => "Raft Internal Error",
            Code::LeaderElect => "During Leader Election",
            Code::EventIndexCleared => "The event in requested index is outdated and cleared",
        }
    }

    /// etcd's HTTP status for the code (400 for the ones it does not list).
    pub fn http_status(self) -> u16 {
        match self {
            Code::KeyNotFound => 404,
            Code::NotFile | Code::DirNotEmpty => 403,
            Code::TestFailed | Code::NodeExist => 412,
            Code::RaftInternal | Code::LeaderElect => 500,
            _ => 400,
        }
    }
}

/// A v2 error document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct V2Error {
    #[serde(rename = "errorCode")]
    pub code: u16,
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cause: String,
    pub index: i64,
}

impl V2Error {
    pub fn new(code: Code, cause: impl Into<String>, index: i64) -> V2Error {
        V2Error {
            code: code as u16,
            message: code.message().to_string(),
            cause: cause.into(),
            index,
        }
    }

    /// An error found in the request itself, before the store was read
    /// (etcd reports index 0 for these).
    pub fn request(code: Code, cause: impl Into<String>) -> V2Error {
        V2Error::new(code, cause, 0)
    }

    pub fn http_status(&self) -> u16 {
        match self.code {
            100 => 404,
            102 | 108 => 403,
            101 | 105 => 412,
            300 | 301 => 500,
            _ => 400,
        }
    }
}

impl std::fmt::Display for V2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.code, self.message, self.cause)
    }
}

impl std::error::Error for V2Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_matches_etcd() {
        let e = V2Error::new(Code::KeyNotFound, "/missing", 4);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"errorCode":100,"message":"Key not found","cause":"/missing","index":4}"#
        );
        assert_eq!(e.http_status(), 404);
        for c in [
            Code::KeyNotFound,
            Code::NotFile,
            Code::TestFailed,
            Code::EventIndexCleared,
        ] {
            assert_eq!(V2Error::new(c, "", 0).http_status(), c.http_status());
        }
    }
}
