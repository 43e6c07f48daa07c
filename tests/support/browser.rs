//! A real browser for the end-to-end tests: headless Chromium, driven through
//! playwright-core by `fixtures/browser.mjs`, which also serves the test page on its own
//! 127.0.0.1 port (so the gateway is always another origin and CORS applies).
//!
//! [`Browser::start`] launches it and [`Browser::run`] runs one page scenario
//! (`fixtures/browser/page.js`), returning the events the page recorded; `begin`,
//! `wait_event` and `finish` split a run for tests that act while it runs. Dropping a
//! [`Browser`] closes the driver's stdin; the driver then closes Chromium and exits, and
//! Chromium also exits when the driver dies, because its control pipe closes.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::{collect_lines, ensure_node_modules, fixtures_dir, line_channel, EVENT_TIMEOUT};

/// Headless Chromium with the test page loaded.
#[derive(Debug)]
pub struct Browser {
    /// The page's origin, `http://127.0.0.1:PORT`: what the browser sends as `Origin`.
    pub origin: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// The running scenario's events so far.
    events: Vec<Value>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Browser {
    /// Launches the browser and loads the page. Fails the test, saying how to install
    /// Chromium, when there is none.
    pub async fn start() -> Browser {
        ensure_node_modules();
        let mut child = Command::new("node")
            .arg("browser.mjs")
            .current_dir(fixtures_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node must be installed to run the end-to-end tests");
        let mut browser = Browser {
            origin: String::new(),
            stdin: child.stdin.take(),
            lines: line_channel(child.stdout.take().unwrap()),
            events: Vec::new(),
            stderr: collect_lines(child.stderr.take().unwrap()),
            child,
        };
        let ready = browser.next_line().await;
        assert_eq!(ready["type"], "ready", "browser.mjs: {ready}");
        browser.origin = ready["origin"].as_str().unwrap().to_owned();
        browser
    }

    /// Runs page scenario `scenario` with `args` and returns the events the page recorded,
    /// in order. Fails the test if the driver reports a failure or a stalled scenario.
    pub async fn run(&mut self, scenario: &str, args: Value) -> Vec<Value> {
        self.begin(scenario, args).await;
        self.finish().await
    }

    /// Starts page scenario `scenario` with `args`, for a test that acts while it runs
    /// ([`Browser::wait_event`]) and then collects its events ([`Browser::finish`]).
    pub async fn begin(&mut self, scenario: &str, args: Value) {
        self.events.clear();
        let line = json!({ "scenario": scenario, "args": args }).to_string() + "\n";
        let stdin = self.stdin.as_mut().expect("browser is running");
        stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to browser.mjs");
    }

    /// Waits until the running scenario has recorded an event that `matches`.
    pub async fn wait_event(&mut self, what: &str, matches: impl Fn(&Value) -> bool) {
        while !self.events.iter().any(&matches) {
            let event = self.next_line().await;
            assert_ne!(
                event["type"], "done",
                "the scenario ended before {what}; events: {:#?}",
                self.events
            );
            self.events.push(event);
        }
    }

    /// Waits for the running scenario to end and returns its events, in order.
    pub async fn finish(&mut self) -> Vec<Value> {
        loop {
            let event = self.next_line().await;
            if event["type"] == "done" {
                return std::mem::take(&mut self.events);
            }
            self.events.push(event);
        }
    }

    /// The driver's next stdout line; a `fatal` line, an early exit or a hang fails the test
    /// with the events seen in the current run and the driver's stderr.
    async fn next_line(&mut self) -> Value {
        let line = tokio::time::timeout(EVENT_TIMEOUT, self.lines.recv()).await;
        let failure = match line {
            Ok(Some(line)) => match serde_json::from_str::<Value>(&line) {
                Ok(value) if value["type"] != "fatal" => return value,
                Ok(value) => value["message"].as_str().unwrap_or_default().to_owned(),
                Err(_) => format!("not JSON: {line}"),
            },
            Ok(None) => "exited".to_owned(),
            Err(_) => format!("no output within {EVENT_TIMEOUT:?}"),
        };
        panic!(
            "browser.mjs: {failure}\nevents so far: {:#?}\nstderr: {:?}",
            self.events,
            self.stderr.lock().unwrap()
        );
    }

    /// Closes the browser and waits (bounded) for the driver to exit.
    pub async fn close(mut self) {
        self.stdin.take();
        let _ = tokio::time::timeout(EVENT_TIMEOUT, self.child.wait()).await;
    }
}

/// Opens the gateway's status page at `url` in headless Chromium, once it has polled three
/// times, and returns the text of each of its `[data-field]` elements by field name; saves
/// a screenshot of the page to `screenshot`.
pub async fn read_status_page(url: &str, screenshot: &std::path::Path) -> Value {
    ensure_node_modules();
    let mut child = Command::new("node")
        .arg("browser.mjs")
        .arg("--status")
        .arg(url)
        .arg(screenshot)
        .current_dir(fixtures_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed to run the end-to-end tests");
    let mut lines = line_channel(child.stdout.take().unwrap());
    let stderr = collect_lines(child.stderr.take().unwrap());
    let line = tokio::time::timeout(EVENT_TIMEOUT, lines.recv())
        .await
        .expect("browser.mjs answers in time")
        .unwrap_or_else(|| panic!("browser.mjs exited: {:?}", stderr.lock().unwrap()));
    let value: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(value["type"], "fields", "browser.mjs: {value}");
    let _ = tokio::time::timeout(EVENT_TIMEOUT, child.wait()).await;
    value["fields"].clone()
}
