//! What a plugin declares it needs (from its config, through its role's `requirements` function), and
//! the check that a pipeline's grants cover it. Pure: no Wasm here.

use crate::error::{Error, Result};
use crate::spec::{ClockGrant, Grants};

/// Something a plugin needs from the host: the SDK's type, so host and guests share one
/// definition (and its `Display`).
pub use sluice_sdk::Requirement;

/// The grant that would cover `r`, as written in the pipeline file.
fn grant_hint(r: &Requirement) -> String {
    match r {
        Requirement::Dir { guest, writable } => format!(
            "grants = {{ dirs = [{{ host = \"<host dir>\", guest = \"{guest}\", read_only = {} }}] }}",
            !writable
        ),
        Requirement::Http(h) => format!("grants = {{ http = [\"{h}\"] }}"),
        Requirement::Socket(s) => format!("grants = {{ sockets = [\"{s}\"] }}"),
        Requirement::Env(e) => format!("grants = {{ env = [\"{e}\"] }}"),
        Requirement::WallClock => "grants = { clock = \"real\" }".to_string(),
    }
}

/// Whether `g` covers `r`.
fn granted_by(r: &Requirement, g: &Grants) -> bool {
    match r {
        Requirement::Dir { guest, writable } => g.dirs.iter().any(|d| {
            let covers = path_covers(&d.guest, guest);
            covers && (!writable || !d.read_only)
        }),
        Requirement::Http(h) => g.http.iter().any(|a| host_port_matches(a, h)),
        Requirement::Socket(s) => g.sockets.iter().any(|a| a.eq_ignore_ascii_case(s.trim())),
        Requirement::Env(e) => g.env.iter().any(|a| a == e),
        Requirement::WallClock => g.clock == ClockGrant::Real,
    }
}

/// Whether a grant at guest path `granted` covers `wanted` (the same path or one below it).
fn path_covers(granted: &str, wanted: &str) -> bool {
    let g = granted.trim_end_matches('/');
    let w = wanted.trim_end_matches('/');
    w == g || g.is_empty() || w.strip_prefix(g).is_some_and(|rest| rest.starts_with('/'))
}

/// Whether an HTTP grant (`host:port` or `*.domain:port`) covers `wanted` (`host:port`).
pub(crate) fn host_port_matches(grant: &str, wanted: &str) -> bool {
    let (Some((gh, gp)), Some((wh, wp))) = (grant.trim().rsplit_once(':'), wanted.trim().rsplit_once(':')) else {
        return false;
    };
    if gp != wp {
        return false;
    }
    let (gh, wh) = (gh.to_ascii_lowercase(), wh.to_ascii_lowercase());
    gh == wh || gh.strip_prefix("*.").is_some_and(|d| wh.ends_with(&format!(".{d}")))
}

/// Fails, naming the plugin, the requirement and the grant to add, unless `grants` cover every
/// requirement. `section` says where the plugin is (`[sink]`, `transform 2`).
pub(crate) fn check(plugin: &str, section: &str, requirements: &[Requirement], grants: &Grants) -> Result<()> {
    for r in requirements {
        if !granted_by(r, grants) {
            return Err(Error::MissingGrant {
                plugin: plugin.to_string(),
                requirement: r.to_string(),
                hint: format!("add `{}` to {section}", grant_hint(r)),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DirGrant;

    #[test]
    fn grants_cover_requirements_or_the_error_says_what_to_add() {
        let mut g = Grants::default();
        g.dirs.push(DirGrant::new("out", "/out", false));
        g.dirs.push(DirGrant::new("in", "/in", true));
        g.http.push("*.example.com:443".into());
        g.env.push("TZ".into());
        let ok = [
            Requirement::Dir { guest: "/out".into(), writable: true },
            Requirement::Dir { guest: "/out/sub".into(), writable: true },
            Requirement::Dir { guest: "/in".into(), writable: false },
            Requirement::Http("api.example.com:443".into()),
            Requirement::Env("TZ".into()),
        ];
        assert!(check("p", "[sink]", &ok, &g).is_ok());
        for bad in [
            Requirement::Dir { guest: "/in".into(), writable: true },
            Requirement::Dir { guest: "/output".into(), writable: false },
            Requirement::Http("api.example.com:80".into()),
            Requirement::Http("example.com.evil:443".into()),
            Requirement::Env("HOME".into()),
            Requirement::WallClock,
            Requirement::Socket("10.0.0.1:5432".into()),
        ] {
            let e = check("p", "[sink]", std::slice::from_ref(&bad), &g).expect_err("must be refused").to_string();
            assert!(e.contains("`p`") && e.contains("grants"), "{e}");
        }
    }
}
