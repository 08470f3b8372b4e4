//! The blank-filling page (`GET /`) in a real browser: a headless Chromium (Debian's `chromium`,
//! which `.ci/run` installs; `GLM_CHROMIUM` names another binary) is driven over the DevTools
//! protocol: the prompt with a `[MASK]` is typed into the text box, the controls set, Generate
//! pressed; the test waits for the fill and checks the page's text against the API's answer for
//! the same request, then saves a screenshot under the test's output folder.
#![cfg(feature = "serve")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use glm_infer::serve::ServeOptions;
use serde_json::{json, Value};

/// A Chromium process, killed on drop.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DevTools session on one page.
struct Page {
    ws: tungstenite::WebSocket<TcpStream>,
    next: u64,
}

impl Page {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(tungstenite::Message::text(msg)).expect("send");
        loop {
            let reply = self.ws.read().expect("DevTools reply");
            let Ok(text) = reply.to_text() else { continue };
            let v: Value = serde_json::from_str(text).expect("DevTools JSON");
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            return Value::String(format!("exception: {e}"));
        }
        r["result"]["value"].clone()
    }

    fn wait_for(&mut self, expression: &str, want: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            if self.eval(expression).as_str() == Some(want) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "{expression} never became {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn get(addr: SocketAddr, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("write");
    // DevTools keeps the connection open: read the head, then Content-Length bytes.
    let mut reader = BufReader::new(s);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().expect("Content-Length");
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("body");
    String::from_utf8(body).expect("UTF-8")
}

#[test]
fn the_page_fills_a_mask_in_a_real_browser() {
    let server = common::fixture_server(ServeOptions::default());
    let addr = server.addr();
    // A [MASK] prompt from the fixtures' own ids, and the API's answer for it.
    let multi = common::read_json("multimask.json");
    let prompt = multi["prompts"]
        .as_object()
        .expect("prompts")
        .values()
        .filter_map(|p| p["raw_text"].as_str())
        .find(|t| t.contains("[MASK]") && !t.contains("[sMASK]") && !t.contains("[gMASK]"))
        .expect("a [MASK] prompt")
        .to_string();
    let max_tokens = 12;
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "seed": 1234});
    let mut s = TcpStream::connect(addr).expect("connect");
    let text = body.to_string();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let api: Value =
        serde_json::from_str(raw.split_once("\r\n\r\n").expect("body").1).expect("JSON");
    let want = api["choices"][0]["filled_text"]
        .as_str()
        .expect("filled_text")
        .to_string();

    let binary = std::env::var("GLM_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("page-test-profile");
    let _ = std::fs::remove_dir_all(&profile);
    let mut child = Command::new(&binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-port=0",
            "--window-size=1000,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start `{binary}` (install chromium, or set GLM_CHROMIUM): {e}")
        });
    let stderr = child.stderr.take().expect("stderr");
    let browser = Browser(child);
    let mut lines = BufReader::new(stderr).lines();
    let ws_url = loop {
        let line = lines
            .next()
            .expect("chromium exited early")
            .expect("stderr line");
        if let Some(url) = line.split("DevTools listening on ").nth(1) {
            break url.trim().to_string();
        }
    };
    // Keep reading chromium's stderr so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let debug: SocketAddr = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("DevTools address");
    let target: Value =
        serde_json::from_str(&get(debug, "PUT", &format!("/json/new?http://{addr}/")))
            .expect("new target");
    let page_url = target["webSocketDebuggerUrl"]
        .as_str()
        .expect("page WebSocket")
        .to_string();
    let stream = TcpStream::connect(debug).expect("DevTools socket");
    let (ws, _) = tungstenite::client(page_url.as_str(), stream).expect("WebSocket handshake");
    let mut page = Page { ws, next: 0 };
    // A new target first reports `complete` for its initial about:blank: wait for our page
    // itself to be loaded (its URL and its text box), not just any document.
    page.wait_for(
        &format!(
            "(location.href === 'http://{addr}/' && document.readyState === 'complete' \
             && document.getElementById('prompt') !== null) ? 'ready' : 'loading'"
        ),
        "ready",
        Duration::from_secs(30),
    );
    // Type the prompt into the text box, set greedy decoding, press Generate.
    page.call(
        "Emulation.setFocusEmulationEnabled",
        json!({"enabled": true}),
    );
    let cleared = page.eval(
        "(() => { const t = document.getElementById('prompt'); t.value = ''; t.focus(); \
         return document.activeElement === t ? 'focused' : 'not focused'; })()",
    );
    assert_eq!(cleared.as_str(), Some("focused"));
    page.call("Input.insertText", json!({"text": prompt}));
    assert_eq!(
        page.eval("document.getElementById('prompt').value")
            .as_str(),
        Some(prompt.as_str())
    );
    page.eval(&format!(
        "document.getElementById('max_tokens').value = '{max_tokens}'; \
         document.getElementById('temperature').value = '0'; \
         document.getElementById('seed').value = '1234'; \
         document.getElementById('go').click(); 'clicked'"
    ));
    page.wait_for(
        "document.getElementById('out').dataset.state",
        "done",
        Duration::from_secs(60),
    );
    let shown = page.eval("document.getElementById('out').dataset.text");
    assert_eq!(
        shown.as_str(),
        Some(want.as_str()),
        "the page's fill vs the API's"
    );
    let visible = page.eval("document.getElementById('out').innerText");
    assert_eq!(
        visible.as_str().map(str::trim),
        Some(want.as_str()),
        "the text on screen"
    );
    let marked = page.eval("document.querySelectorAll('#out mark').length");
    assert!(
        marked.as_u64().unwrap_or(0) >= 1,
        "the fills are highlighted"
    );
    let stats = page.eval("document.getElementById('stats').textContent");
    assert!(
        stats
            .as_str()
            .is_some_and(|s| s.contains("tokens/s") && s.contains("first token")),
        "{stats}"
    );
    let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    std::fs::write(&out, &png).expect("write the screenshot");
    eprintln!("screenshot: {}", out.display());
    drop(page);
    drop(browser);
    server.shutdown().expect("shutdown");
}
