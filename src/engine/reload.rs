//! Putting a new configuration in force while usher runs: `kill -HUP`, `usher reload`,
//! `POST /reload`, and host names that resolve to new addresses.
//!
//! The file is read and validated exactly as `usher check` does it, off the request path (the
//! callers run this on a blocking thread); an invalid file changes nothing and its errors go back
//! to the caller, each with its path. A valid one is compiled against the state into the next
//! generation and swapped in whole. Settings that Pingora fixes when it starts (listeners, worker
//! threads, the grace period, the upstream connection pool) cannot change this way: a reload that
//! changes one is refused, whole, with what to do instead (pingap draws the same line between what
//! applies live and what needs a restart).

use super::{Generation, Source, Usher};
use crate::config::{Config, ConfigErrors, ServerConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("usher was not started from a file: there is nothing to read again")]
    NoSource,
    #[error("{} is not valid; the running configuration stays:\n{errors}", path.display())]
    Invalid { path: PathBuf, errors: ConfigErrors },
    #[error("{}; the running configuration stays", .0.join("; "))]
    Cold(Vec<String>),
    #[error("the configuration changed while this one was being made; it was not applied")]
    Superseded,
}

/// A configuration put in force.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub generation: u64,
    pub source: Source,
}

/// What the configuration in force fixed when Pingora started, and how to change it anyway.
fn cold_changes(now: &ServerConfig, next: &ServerConfig) -> Vec<String> {
    let restart =
        "restart usher, or upgrade without a gap: `usher run --upgrade` takes over from the running one";
    let mut out = Vec::new();
    let mut check = |key: &str, changed: bool, was: String, is: String| {
        if changed {
            out.push(format!(
                "{key} changed from {was} to {is}: it cannot change while usher runs; {restart}"
            ));
        }
    };
    check(
        "server.listen",
        now.listen != next.listen,
        format!("{:?}", now.listen),
        format!("{:?}", next.listen),
    );
    let admin =
        |a: Option<std::net::SocketAddr>| a.map_or("\"off\"".to_string(), |a| a.to_string());
    check(
        "server.admin",
        now.admin != next.admin,
        admin(now.admin),
        admin(next.admin),
    );
    check(
        "server.threads",
        now.threads != next.threads,
        now.threads.to_string(),
        next.threads.to_string(),
    );
    check(
        "server.grace_period",
        now.grace_period != next.grace_period,
        format!("{:?}", now.grace_period),
        format!("{:?}", next.grace_period),
    );
    check(
        "server.upstream_idle_connections",
        now.upstream_idle_connections != next.upstream_idle_connections,
        now.upstream_idle_connections.to_string(),
        next.upstream_idle_connections.to_string(),
    );
    check(
        "server.h2c",
        now.h2c != next.h2c,
        now.h2c.to_string(),
        next.h2c.to_string(),
    );
    // The listeners and what they offer by ALPN are fixed; their certificates are not.
    let tls = |t: &Option<crate::config::TlsConfig>| t.as_ref().map(|t| (t.listen.clone(), t.h2));
    check(
        "server.tls (listen, h2)",
        tls(&now.tls) != tls(&next.tls),
        format!("{:?}", tls(&now.tls)),
        format!("{:?}", tls(&next.tls)),
    );
    // HTTP/1 heads are measured by usher on each request, but HTTP/2's header-list limit is
    // Pingora's HTTP/2 setting, made once at start: a new limit would hold for HTTP/1 alone.
    let h2 = next.h2c || next.tls.as_ref().is_some_and(|t| t.h2);
    check(
        "server.max_header_bytes (with HTTP/2 on, its header-list limit is set at start)",
        h2 && now.max_header_bytes != next.max_header_bytes,
        now.max_header_bytes.to_string(),
        next.max_header_bytes.to_string(),
    );
    out
}

impl Usher {
    /// Reads the file the configuration in force came from again, validates it and puts it in
    /// force. Blocking: run it off the request path.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let path = self
            .generation()
            .source
            .path
            .clone()
            .ok_or(ReloadError::NoSource)?;
        let result = match Config::load_with_text(&path) {
            Ok((config, text)) => {
                let source = Source::of_text(Some(path), &text, crate::time::wall_ms(), "reload");
                self.apply(config, source)
            }
            Err(errors) => Err(ReloadError::Invalid { path, errors }),
        };
        self.state.metrics.reload(result.is_ok());
        match &result {
            Ok(r) => tracing::info!(
                generation = r.generation,
                hash = %r.source.hash,
                "configuration reloaded"
            ),
            Err(e) => tracing::error!("reload refused: {e}"),
        }
        result
    }

    /// Puts `config` in force as the next generation, unless it changes what cannot change while
    /// usher runs.
    pub fn apply(&self, config: Config, source: Source) -> Result<Reloaded, ReloadError> {
        self.apply_over(None, config, source)
    }

    /// As [`Self::apply`]; with `base`, only if generation `base` is still the one in force (a
    /// configuration derived from it must not undo a reload that came in between).
    fn apply_over(
        &self,
        base: Option<u64>,
        config: Config,
        source: Source,
    ) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reloading.lock();
        let current = self.generation();
        if base.is_some_and(|b| b != current.number) {
            return Err(ReloadError::Superseded);
        }
        let mut cold = cold_changes(&current.config.server, &config.server);
        if current.config.state.dir != config.state.dir {
            // The graceful upgrade's socket and the running usher's marks live there.
            cold.push(format!(
                "state.dir changed from {} to {}: it cannot change while usher runs; restart usher",
                current.config.state.dir.display(),
                config.state.dir.display()
            ));
        }
        if current.config.privacy.pseudonyms != config.privacy.pseudonyms {
            // Events raised, cooldowns and the recent-events ring are keyed by the pseudonym in
            // force when they were made: a new key would leave erasure unable to find them.
            cold.push(
                "privacy.pseudonym_key_file: the pseudonym key (or whether there is one) changed: it cannot change while usher runs; restart usher".to_string(),
            );
        }
        if !cold.is_empty() {
            return Err(ReloadError::Cold(cold));
        }
        let number = current.number + 1;
        let gen = Generation::build(config, &self.state, number, source, Instant::now());
        self.state
            .store
            .set_track_max(gen.config.experience.track_max);
        self.state
            .events
            .reconcile(&gen.config.events.sinks, &gen.config.events.spool_dir);
        let reloaded = Reloaded {
            generation: number,
            source: gen.source.clone(),
        };
        self.state
            .metrics
            .config_loaded(number, reloaded.source.loaded_ms);
        gen.install(&self.state);
        self.current.store(Arc::new(gen));
        self.changed.send_replace(number);
        Ok(reloaded)
    }

    /// Looks the pools' host names up again (`resolve`: the system resolver in production) and,
    /// when an address changed, puts the same configuration with the new addresses in force, as a
    /// reload would: addresses that stay keep what is known of them. Blocking.
    pub fn re_resolve(&self, resolve: &mut crate::config::Resolve<'_>) -> Option<Reloaded> {
        let g = self.generation();
        if !g.config.has_host_names() {
            return None;
        }
        let (next, failures) = g.config.re_resolved(resolve);
        for (name, e) in &failures {
            tracing::warn!(upstream = %name, "cannot resolve upstream host, keeping its last addresses: {e}");
        }
        if !failures.is_empty() {
            self.state.metrics.resolution("failure");
        }
        let Some(next) = next else {
            if failures.is_empty() {
                self.state.metrics.resolution("unchanged");
            }
            return None;
        };
        self.state.metrics.resolution("changed");
        let source = Source {
            cause: "resolve",
            loaded_ms: crate::time::wall_ms(),
            ..g.source.clone()
        };
        let before: Vec<String> = g.config.upstreams.iter().map(|a| a.to_string()).collect();
        match self.apply_over(Some(g.number), next, source) {
            Ok(r) => {
                let after: Vec<String> = self
                    .generation()
                    .config
                    .upstreams
                    .iter()
                    .map(|a| a.to_string())
                    .collect();
                tracing::info!(
                    generation = r.generation,
                    ?before,
                    ?after,
                    "upstream host names resolve to new addresses"
                );
                Some(r)
            }
            Err(e) => {
                tracing::error!("new upstream addresses not applied: {e}");
                None
            }
        }
    }
}
