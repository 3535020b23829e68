//! The admin page and the small result pages the forms lead to: plain HTML with inline CSS, no
//! external assets. The forms work without JavaScript; with it, each asks `confirm()` first.

use std::fmt::Write;

use super::{Admin, Snapshot};
use crate::clock::{human_duration, utc};
use crate::ops::{LastRestart, Status};

/// Escape text for HTML element content and double-quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f4f5f7;color:#1d2228}\
main{max-width:960px;margin:0 auto;padding:20px 24px 40px}\
h1{font-size:24px;margin:8px 0 2px}h2{font-size:17px;margin:0 0 10px}\
.sub{color:#5b6470;margin:0 0 18px}\
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:14px 18px;margin:0 0 16px}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:5px 10px 5px 0;vertical-align:top;border-bottom:1px solid #eef0f2}\
th{width:210px;color:#4a525c;font-weight:600}tr:last-child th,tr:last-child td{border-bottom:0}\
code{font:13px ui-monospace,Menlo,Consolas,monospace;background:#f1f3f5;padding:1px 4px;border-radius:4px;word-break:break-all}\
.big{font-size:18px;font-weight:700}\
.ok{color:#13733a}.fail{color:#b3261e}.muted{color:#6b737d}\
form{margin:0 0 12px}label{display:block;font-weight:600;margin:0 0 4px}\
input[type=text]{width:100%;box-sizing:border-box;font:14px ui-monospace,Menlo,Consolas,monospace;padding:7px 8px;border:1px solid #c3c9d0;border-radius:6px;margin:0 0 8px}\
button{font:inherit;font-weight:600;padding:7px 18px;border-radius:6px;border:1px solid #1f5fbf;background:#2b6fd6;color:#fff;cursor:pointer}\
button.danger{border-color:#9c1f17;background:#c0392b}\
.hint{color:#6b737d;font-size:13px;margin:4px 0 0}\
.banner{padding:10px 14px;border-radius:8px;margin:0 0 16px;border:1px solid}\
.banner.ok{background:#e8f6ee;border-color:#a6d8b8}.banner.fail{background:#fdecea;border-color:#f1b0a9}\
a{color:#1f5fbf}footer{color:#6b737d;font-size:13px}";

fn layout(title: &str, refresh: Option<(u32, &str)>, body: &str) -> String {
    let refresh = refresh
        .map(|(secs, url)| {
            format!(
                "<meta http-equiv=\"refresh\" content=\"{secs};url={}\">",
                escape(url)
            )
        })
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">{refresh}\
         <title>{}</title><style>{STYLE}</style></head>\n<body><main>\n{body}</main></body></html>\n",
        escape(title)
    )
}

fn row(out: &mut String, label: &str, id: &str, value_html: &str) {
    let id = if id.is_empty() {
        String::new()
    } else {
        format!(" id=\"{id}\"")
    };
    let _ = writeln!(
        out,
        "<tr><th>{}</th><td{id}>{value_html}</td></tr>",
        escape(label)
    );
}

fn last_restart_html(l: &Option<LastRestart>, now: u64) -> String {
    match l {
        None => "<span class=\"muted\">none since the host started</span>".into(),
        Some(l) => {
            let (class, word) = if l.ok {
                ("ok", "succeeded")
            } else {
                ("fail", "failed")
            };
            format!(
                "<span class=\"{class}\" id=\"last-restart\"><b>{word}</b></span> \
                 (asked by {}, {}, {} ago): {}",
                escape(&l.trigger),
                utc(l.at_unix),
                human_duration(now.saturating_sub(l.at_unix) as f64),
                escape(&l.detail)
            )
        }
    }
}

/// The admin page.
pub(crate) fn page(admin: &Admin, snap: &Snapshot, now_unix: u64) -> String {
    let w = &snap.worker;
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<h1>apphost admin</h1>\n<p class=\"sub\">server <b>{}</b> &middot; this page was \
         served by worker pid <b id=\"page-pid\">{}</b> (generation {}) at {}</p>",
        escape(&admin.server),
        w.pid,
        w.generation,
        utc(now_unix)
    );
    if w.draining {
        b.push_str(
            "<p class=\"banner fail\">This worker is draining: a newer generation serves new \
             connections. <a href=\"\">Reload</a> to see it.</p>\n",
        );
    }
    let st: Option<&Status> = snap.status.as_ref().ok();
    if let Err(e) = &snap.status {
        let _ = writeln!(
            b,
            "<p class=\"banner fail\">The supervisor could not be asked: {}</p>",
            escape(&e.to_string())
        );
    }
    b.push_str("<section><h2>Processes</h2><table>\n");
    let dash = || "<span class=\"muted\">-</span>".to_string();
    row(
        &mut b,
        "Supervisor pid",
        "supervisor-pid",
        &st.map_or_else(dash, |s| {
            format!("<span class=\"big\">{}</span>", s.supervisor_pid)
        }),
    );
    let serving_pid = st.and_then(|s| s.worker_pid);
    row(
        &mut b,
        "Worker pid",
        "worker-pid",
        &serving_pid.map_or_else(dash, |p| format!("<span class=\"big\">{p}</span>")),
    );
    row(
        &mut b,
        "Generation",
        "generation",
        &st.map_or_else(
            || w.generation.to_string(),
            |s| {
                format!(
                    "{} <span class=\"muted\">({} since start)</span>",
                    s.generation,
                    crate::clock::plural(s.restarts, "restart")
                )
            },
        ),
    );
    if let Some(s) = st {
        row(&mut b, "Phase", "phase", &escape(&s.phase));
        row(
            &mut b,
            "Uptime",
            "uptime",
            &format!(
                "host {} &middot; this generation {}",
                human_duration(s.uptime_s),
                human_duration(s.generation_uptime_s)
            ),
        );
        row(
            &mut b,
            "Executable",
            "exe",
            &format!("<code>{}</code>", escape(&s.exe)),
        );
        if w.exe != s.exe {
            row(
                &mut b,
                "This worker runs",
                "worker-exe",
                &format!("<code>{}</code>", escape(&w.exe)),
            );
        }
        row(
            &mut b,
            "Config",
            "config",
            &format!("<code>{}</code>", escape(&s.config)),
        );
        row(
            &mut b,
            "Restart mode",
            "mode",
            if s.graceful {
                "graceful (the new worker is ready before the old one drains)"
            } else {
                "full (the old worker drains, then the new one starts)"
            },
        );
    } else {
        row(
            &mut b,
            "This worker runs",
            "worker-exe",
            &format!("<code>{}</code>", escape(&w.exe)),
        );
    }
    row(
        &mut b,
        "In-flight connections",
        "connections",
        &w.connections.map_or_else(dash, |n| {
            format!("{n} <span class=\"muted\">(this worker, this request included)</span>")
        }),
    );
    row(
        &mut b,
        "Last restart",
        "",
        &st.map_or_else(dash, |s| last_restart_html(&s.last_restart, now_unix)),
    );
    b.push_str("</table></section>\n");

    let restart = escape(&admin.action_url("restart"));
    let shutdown = escape(&admin.action_url("shutdown"));
    let placeholder = st.map_or_else(|| w.exe.clone(), |s| s.exe.clone());
    let dirs = if admin.allowed_exe_dirs.is_empty() {
        String::new()
    } else {
        let list = admin
            .allowed_exe_dirs
            .iter()
            .map(|d| format!("<code>{}</code>", escape(&d.display().to_string())))
            .collect::<Vec<_>>()
            .join(", ");
        format!(" It must be in {list}.")
    };
    let _ = writeln!(
        b,
        "<section><h2>Actions</h2>\n\
         <form method=\"post\" action=\"{restart}\" \
         onsubmit=\"return confirm('Restart the host now?')\">\n\
         <label for=\"exe-input\">New executable (optional)</label>\n\
         <input type=\"text\" id=\"exe-input\" name=\"newExeFilePath\" \
         placeholder=\"{}\" autocomplete=\"off\" spellcheck=\"false\">\n\
         <button type=\"submit\" id=\"restart\">Restart</button>\n\
         <p class=\"hint\">Leave it empty to restart the recorded executable; otherwise give an \
         absolute path.{dirs} The answer comes once the new worker serves (or has failed).</p>\n\
         </form>\n\
         <form method=\"post\" action=\"{shutdown}\" \
         onsubmit=\"return confirm('Shut the host down? Every worker drains, then the supervisor exits.')\">\n\
         <button type=\"submit\" id=\"shutdown\" class=\"danger\">Shutdown</button>\n\
         </form></section>",
        escape(&placeholder)
    );
    b.push_str(
        "<section><h2>Servers</h2><table>\n<tr><th>Server</th><th>Listeners</th><th>Admin</th></tr>\n",
    );
    for s in &admin.servers {
        let listeners = s
            .listeners
            .iter()
            .map(|l| format!("<code>{}</code>", escape(l)))
            .collect::<Vec<_>>()
            .join(" ");
        let adm = s
            .admin
            .as_deref()
            .map_or_else(dash, |p| format!("<code>{}</code>", escape(p)));
        let _ = writeln!(
            b,
            "<tr><td>{}</td><td>{listeners}</td><td>{adm}</td></tr>",
            escape(&s.name)
        );
    }
    if let Some(s) = st {
        let held = s
            .listeners
            .iter()
            .map(|l| format!("<code>{}</code>", escape(l)))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            b,
            "<tr><td class=\"muted\">held by the supervisor</td><td colspan=\"2\">{held}</td></tr>"
        );
    }
    b.push_str("</table></section>\n");

    let status_url = escape(&admin.action_url("status"));
    let page_url = escape(&admin.path);
    let _ = writeln!(
        b,
        "<footer>As JSON: <a href=\"{status_url}\">{status_url}</a> &middot; \
         <a href=\"{page_url}\">Refresh</a></footer>"
    );
    layout(&format!("apphost admin: {}", admin.server), None, &b)
}

/// A result page after a form: a banner, a few facts, a link back (and, when `refresh` is set,
/// an automatic return to the admin page after that many seconds).
pub(crate) fn result(
    admin: &Admin,
    ok: bool,
    headline: &str,
    rows: &[(&str, String)],
    refresh: Option<u32>,
) -> String {
    let class = if ok { "ok" } else { "fail" };
    let mut b = String::new();
    let _ = writeln!(
        b,
        "<h1>apphost admin</h1>\n<p class=\"banner {class}\" id=\"result\"><b>{}</b></p>",
        escape(headline)
    );
    if !rows.is_empty() {
        b.push_str("<section><table>\n");
        for (label, value) in rows {
            let id = match *label {
                "New worker pid" => "new-pid",
                _ => "",
            };
            row(&mut b, label, id, &escape(value));
        }
        b.push_str("</table></section>\n");
    }
    let back = escape(&admin.path);
    let again = if refresh.is_some() {
        " (going back there in a moment)"
    } else {
        ""
    };
    let _ = writeln!(
        b,
        "<p><a href=\"{back}\" id=\"back\">Back to the admin page</a>{again}</p>"
    );
    layout(
        &format!("apphost admin: {headline}"),
        refresh.map(|s| (s, admin.path.as_str())),
        &b,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html() {
        assert_eq!(
            escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }
}
