//! The role decision: from the role asked for and what bootstrap found,
//! what this agent becomes. Pure; the agent acts on the answer.

/// The role the configuration asks for (`--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    Voter,
    Learner,
    Proxy,
}

/// `--discovery-fallback`: what a voter does when the cluster it was
/// told to form is already full without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    Exit,
    Proxy,
    Learner,
}

impl std::str::FromStr for Fallback {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exit" => Ok(Fallback::Exit),
            "proxy" => Ok(Fallback::Proxy),
            "learner" => Ok(Fallback::Learner),
            _ => Err("must be exit, proxy or learner".into()),
        }
    }
}

/// What bootstrap found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// This agent is one of the initial members: `--initial-cluster`.
    Member {
        initial_cluster: Vec<(String, String)>,
    },
    /// The cluster is formed (or forming) without this agent; the client
    /// URLs it can be reached at (maybe none known).
    Full { client_urls: Vec<String> },
}

/// What the agent becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start a new cluster with these initial members.
    Voter {
        initial_cluster: Vec<(String, String)>,
    },
    /// Add itself as a learner through these client URLs.
    Learner { endpoints: Vec<String> },
    /// Forward to these client URLs.
    Proxy { endpoints: Vec<String> },
    /// Stop with this message.
    Exit(String),
}

pub fn decide(requested: Requested, found: &Found, fallback: Fallback) -> Decision {
    let reach = |urls: &[String], what: &str, make: fn(Vec<String>) -> Decision| {
        if urls.is_empty() {
            Decision::Exit(format!(
                "discovery: cluster is full and no client URLs of its members are known, \
                 so this agent cannot become a {what}"
            ))
        } else {
            make(urls.to_vec())
        }
    };
    let learner = |e| Decision::Learner { endpoints: e };
    let proxy = |e| Decision::Proxy { endpoints: e };
    match (requested, found) {
        (Requested::Voter, Found::Member { initial_cluster }) => Decision::Voter {
            initial_cluster: initial_cluster.clone(),
        },
        (Requested::Voter, Found::Full { client_urls }) => match fallback {
            Fallback::Exit => Decision::Exit("discovery: cluster is full".into()),
            Fallback::Proxy => reach(client_urls, "proxy", proxy),
            Fallback::Learner => reach(client_urls, "learner", learner),
        },
        // Learners and proxies never take a voter's place; they reach the
        // members the bootstrap found.
        (Requested::Learner, Found::Full { client_urls }) => reach(client_urls, "learner", learner),
        (Requested::Proxy, Found::Full { client_urls }) => reach(client_urls, "proxy", proxy),
        (Requested::Learner | Requested::Proxy, Found::Member { .. }) => Decision::Exit(
            "a learner or proxy is never one of the initial members; \
             give it the cluster's client URLs (--endpoints)"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cluster = vec![("n1".to_string(), "http://127.0.0.1:2380".to_string())];
        let member = Found::Member {
            initial_cluster: cluster.clone(),
        };
        let urls = vec!["http://127.0.0.1:2379".to_string()];
        let full = Found::Full {
            client_urls: urls.clone(),
        };
        let full_unknown = Found::Full {
            client_urls: vec![],
        };
        use Decision as D;
        use Fallback as F;
        use Requested as R;
        let voter = D::Voter {
            initial_cluster: cluster.clone(),
        };
        let learner = D::Learner {
            endpoints: urls.clone(),
        };
        let proxy = D::Proxy {
            endpoints: urls.clone(),
        };
        let table: Vec<(R, &Found, F, D)> = vec![
            (R::Voter, &member, F::Exit, voter.clone()),
            (R::Voter, &member, F::Proxy, voter.clone()),
            (R::Voter, &member, F::Learner, voter),
            (
                R::Voter,
                &full,
                F::Exit,
                D::Exit("discovery: cluster is full".into()),
            ),
            (R::Voter, &full, F::Proxy, proxy.clone()),
            (R::Voter, &full, F::Learner, learner.clone()),
            (R::Learner, &full, F::Exit, learner.clone()),
            (R::Learner, &full, F::Proxy, learner),
            (R::Proxy, &full, F::Learner, proxy.clone()),
            (R::Proxy, &full, F::Exit, proxy),
        ];
        for (r, f, fb, want) in table {
            assert_eq!(decide(r, f, fb), want, "{r:?} {f:?} {fb:?}");
        }
        for (r, fb) in [
            (R::Voter, F::Proxy),
            (R::Voter, F::Learner),
            (R::Learner, F::Exit),
            (R::Proxy, F::Exit),
        ] {
            assert!(
                matches!(decide(r, &full_unknown, fb), D::Exit(m) if m.contains("no client URLs"))
            );
        }
        assert!(matches!(decide(R::Learner, &member, F::Exit), D::Exit(_)));
        assert_eq!("learner".parse::<F>(), Ok(F::Learner));
        assert!("maybe".parse::<F>().is_err());
    }
}
