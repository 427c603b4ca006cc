//! The web console in a real browser: headless Chromium (Debian's `chromium`) driven over
//! WebDriver (`chromedriver`) with fantoccini, against a real collector and two real agents.
//! It checks the token prompt (a bad token gets a clear message), the fleet table (both agents
//! listed; a stopped one turns silent), Explore (the chart's point count and extremes match
//! `/api/v1/query`), that a quarantined `<script>` payload is shown as text and does not run,
//! and that the browser logged no JavaScript error; it saves a screenshot of every page at
//! 1280 and 375 px under `target/console-screenshots/`, and prints how long Explore takes to
//! its first chart (BENCHMARKS.md).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use tributary_bench::harness::{
    AgentProcess, CollectorOptions, CollectorProcess, Process, agent_config_with, free_port, http,
    port_open, token_pair, wait_until,
};

use crate::blocking;

/// Chromium's console log through chromedriver (`POST /session/{id}/se/log`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// chromedriver and a headless Chromium session, with their own profile directory.
struct Browser {
    client: Client,
    _driver: Process,
    _profile: tempfile::TempDir,
    /// Console entries read so far (reading drains chromedriver's buffer).
    log: Vec<serde_json::Value>,
}

impl Drop for Browser {
    /// Chromium holds chromedriver's output pipes, and a session a failed test did not close
    /// keeps it running: kill it (found by its profile directory) so chromedriver's process can
    /// be reaped and nothing outlives the test.
    fn drop(&mut self) {
        // chromedriver leads its own process group, which Chromium's processes join.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self._driver.pid())])
            .status();
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", "--"])
            .arg(format!(
                "--user-data-dir={}",
                self._profile.path().display()
            ))
            .status();
    }
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let mut command = Command::new("chromedriver");
        command.arg(format!("--port={port}"));
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = Process::spawn("chromedriver", command).unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || port_open(port)),
            "chromedriver did not listen"
        );
        let profile = tempfile::tempdir().unwrap();
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,800", "--no-first-run", "--disable-extensions",
                    "--disable-crash-reporter", "--disable-breakpad",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session (apt install chromium chromium-driver)");
        Browser {
            client,
            _driver: driver,
            _profile: profile,
            log: Vec::new(),
        }
    }

    async fn drain_log(&mut self) {
        if let Ok(serde_json::Value::Array(entries)) = self.client.issue_cmd(BrowserLog).await {
            self.log.extend(entries);
        }
    }

    /// Errors the page's scripts logged or threw (failed requests, such as the 401s of the
    /// token prompt, are the network's, not JavaScript errors).
    fn script_errors(&self) -> Vec<&serde_json::Value> {
        self.log
            .iter()
            .filter(|e| e["level"] == "SEVERE" && e["source"] != "network")
            .collect()
    }

    async fn wait_css(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// Text whose contrast with its background is under WCAG AA (4.5:1, 3:1 for large
    /// text), as `[text, ratio]` pairs; disabled controls are exempt, as WCAG says.
    async fn low_contrast(&self) -> Vec<serde_json::Value> {
        let found = self.client.execute(CONTRAST_SCRIPT, vec![]).await.unwrap();
        serde_json::from_value(found).unwrap()
    }

    async fn text(&self, css: &str) -> String {
        self.wait_css(css).await.text().await.unwrap()
    }

    /// Screenshots of the page at 1280 and 375 px, as `name-1280.png` and `name-375.png`.
    async fn screenshots(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        for (width, height) in [(1280u32, 800u32), (375, 800)] {
            self.client.set_window_size(width, height).await.unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
            let png = self.client.screenshot().await.unwrap();
            std::fs::write(dir.join(format!("{name}-{width}.png")), png).unwrap();
        }
        self.client.set_window_size(1280, 800).await.unwrap();
    }
}

/// Walks the visible elements that hold text and measures their contrast (WCAG 2 relative
/// luminance) against the first opaque background up the tree.
const CONTRAST_SCRIPT: &str = r#"
const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
const parse = (c) => (c.match(/[\d.]+/g) || []).map(Number);
const luminance = (c) => { const [r, g, b] = parse(c); return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b); };
const background = (e) => {
  for (; e; e = e.parentElement) {
    const c = getComputedStyle(e).backgroundColor, p = parse(c);
    if (p.length === 3 || (p.length === 4 && p[3] > 0.5)) return c;
  }
  return "rgb(255, 255, 255)";
};
const low = [];
for (const e of document.querySelectorAll("body *")) {
  const text = [...e.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent.trim()).join(" ").trim();
  if (!text || e.closest(":disabled") || !e.getClientRects().length) continue;
  const s = getComputedStyle(e);
  if (s.visibility === "hidden") continue;
  const [a, b] = [luminance(s.color), luminance(background(e))];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const size = parseFloat(s.fontSize), bold = Number(s.fontWeight) >= 700;
  const need = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
  if (ratio < need) low.push([text.slice(0, 40), Math.round(ratio * 100) / 100]);
}
return low;
"#;

fn agent(dir: &std::path::Path, id: &str, collector: &str) -> String {
    let text = agent_config_with(
        id,
        &dir.join("data"),
        collector,
        free_port(),
        "[[inputs.system]]\ninterval = \"1s\"\ncollect = [\"mem\"]\n",
    );
    // Its own health every second, for the agent page's charts.
    text.replace(
        "shutdown_timeout = \"10s\"",
        "shutdown_timeout = \"10s\"\nself_metrics = \"1s\"",
    )
}

async fn write_lines(url: &str, token: &str, body: String) -> reqwest::Response {
    http()
        .post(format!("{url}/api/v2/write?precision=s"))
        .header("authorization", format!("Token {token}"))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Opens Explore on one series over 24 h at step 1m; returns (ms from navigation to the first
/// chart, the stats row's point count, min, max).
async fn explore_one(browser: &Browser, base: &str) -> (f64, u64, f64, f64) {
    let series = serde_json::json!({"name": "console_test", "field": "value", "tags": {"agent": "a1", "device": "d1"}});
    let mut params = url::form_urlencoded::Serializer::new(String::new());
    params.append_pair("s", &series.to_string());
    params.append_pair("range", "24h");
    params.append_pair("step", "1m");
    params.append_pair("agg", "mean");
    // A fresh page load, so the figure covers loading the console too.
    browser.client.goto("about:blank").await.unwrap();
    browser
        .client
        .goto(&format!("{base}/#/explore?{}", params.finish()))
        .await
        .unwrap();
    let chart = browser.wait_css("#explore-chart[data-since-load-ms]").await;
    let drawn: f64 = chart
        .attr("data-since-load-ms")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    let row = browser.wait_css("#explore-stats tr[data-points]").await;
    let attr = async |name: &str| row.attr(name).await.unwrap().unwrap();
    (
        drawn,
        attr("data-points").await.parse().unwrap(),
        attr("data-min").await.parse().unwrap(),
        attr("data-max").await.parse().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_fleet_explore_and_quarantine_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (t1, _) = token_pair("a1");
    let (t2, _) = token_pair("a2");
    let (reader, reader_hash) = token_pair("console");
    // A thousand more agents that never report: the fleet table pages through them.
    let fleet: String = (0..1000)
        .map(|i| {
            let (_, hash) = token_pair(&format!("idle-{i:04}"));
            format!("[[agents]]\nid = \"idle-{i:04}\"\ntoken_sha256 = \"{hash}\"\n\n")
        })
        .collect();
    let mut collector = blocking(|| {
        CollectorProcess::start_custom(
            &dir.path().join("collector"),
            &[("a1", &t1), ("a2", &t2)],
            &CollectorOptions {
                anonymous_read: false,
                extra: format!(
                    "{fleet}[[readers]]\nid = \"console\"\ntoken_sha256 = \"{reader_hash}\"\n\n[fleet]\nlate_after = \"2s\"\nsilent_after = \"4s\"\n"
                ),
                ..CollectorOptions::default()
            },
        )
        .unwrap()
    });
    let url = collector.url();
    let a1 = blocking(|| {
        AgentProcess::start(
            &dir.path().join("a1"),
            &agent(&dir.path().join("a1"), "a1", &url),
            &[("TRIBUTARY_TOKEN", &t1)],
        )
        .unwrap()
    });
    let mut a2 = Some(blocking(|| {
        AgentProcess::start(
            &dir.path().join("a2"),
            &agent(&dir.path().join("a2"), "a2", &url),
            &[("TRIBUTARY_TOKEN", &t2)],
        )
        .unwrap()
    }));

    // A day of one series at one point a minute (well inside the 24 h view), and two lines
    // that are not line protocol: markup that would run if the console rendered payloads as
    // HTML.
    let now = tributary_wire::time::now_ns() / 1_000_000_000;
    let lines: String = (0..1380)
        .map(|i| {
            let t = now - 23 * 3600 + i * 60;
            let v = 20.0 + 5.0 * ((i as f64) / 90.0).sin();
            format!("console_test,device=d1 value={v:.4} {t}\n")
        })
        .collect();
    assert_eq!(write_lines(&url, &t1, lines).await.status(), 204);
    let hostile = "<script>window.__xss=1</script>\n<img src=x onerror=\"window.__xss=2\">\n";
    let refused = write_lines(&url, &t1, hostile.to_owned()).await;
    assert_eq!(refused.status(), 400, "the markup lines are refused");

    let mut browser = Browser::start().await;
    let base = url.trim_end_matches('/').to_owned();

    // No token: the prompt says one is needed. A bad one: it says it was refused.
    browser.client.goto(&format!("{base}/")).await.unwrap();
    browser.wait_css("dialog#login[open]").await;
    let reason = browser.text("#login-reason").await;
    assert!(reason.contains("needs a reader token"), "{reason}");
    browser
        .wait_css("#token")
        .await
        .send_keys("not-a-token")
        .await
        .unwrap();
    browser
        .wait_css("#login-form button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    assert!(
        wait_until_async(Duration::from_secs(20), async || {
            browser.text("#login-reason").await.contains("refused")
        })
        .await,
        "a bad token gets a clear message"
    );
    let reason = browser.text("#login-reason").await;
    assert!(reason.contains("The token was refused"), "{reason}");
    browser.screenshots("bad-token").await;
    let field = browser.wait_css("#token").await;
    field.clear().await.unwrap();
    field.send_keys(&reader).await.unwrap();
    browser
        .wait_css("#login-form button[type=submit]")
        .await
        .click()
        .await
        .unwrap();

    // The fleet pages through the 1,002 agents (the never-seen ones sort before those that
    // are ok), and the filter finds the two that report.
    browser
        .wait_css("#fleet-table tr[data-status=\"never_seen\"]")
        .await;
    let pager = browser.text(".pager span").await;
    assert!(pager.contains("Page 1 of 21 (1002 agents)"), "{pager}");
    let rows = browser
        .client
        .find_all(Locator::Css("#fleet-table tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 50);
    browser
        .wait_css("#fleet-filter")
        .await
        .send_keys("a")
        .await
        .unwrap();
    browser.wait_css("#fleet-table tr[data-agent=\"a1\"]").await;
    browser.wait_css("#fleet-table tr[data-agent=\"a2\"]").await;
    let mut low_contrast = browser.low_contrast().await;
    browser.screenshots("fleet").await;

    // A stopped agent turns silent (silent_after = 4s; the table refreshes every 5 s).
    drop(a2.take());
    browser
        .client
        .wait()
        .at_most(Duration::from_secs(40))
        .for_element(Locator::Css(
            "#fleet-table tr[data-agent=\"a2\"][data-status=\"silent\"]",
        ))
        .await
        .expect("the stopped agent turns silent");
    let a1_status = browser
        .wait_css("#fleet-table tr[data-agent=\"a1\"]")
        .await
        .attr("data-status")
        .await
        .unwrap();
    assert_eq!(
        a1_status.as_deref(),
        Some("ok"),
        "the running agent stays ok"
    );

    // The agent page.
    browser
        .client
        .goto(&format!("{base}/#/agent/a1"))
        .await
        .unwrap();
    browser.wait_css("#agent-head dl").await;
    browser.wait_css("#agent-series li a").await;
    low_contrast.extend(browser.low_contrast().await);
    browser.screenshots("agent").await;

    // Explore: the chart's points and extremes are /api/v1/query's.
    let (first_chart_ms, points, min, max) = explore_one(&browser, &base).await;
    let answer: serde_json::Value = http()
        .get(format!(
            "{base}/api/v1/query?name=console_test&field=value&tag.device=d1&tag.agent=a1&from=now-24h&to=now&step=1m&agg=mean"
        ))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let values: Vec<f64> = answer["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p[1].as_f64())
        .collect();
    assert_eq!(points, values.len() as u64, "points on the chart");
    assert_eq!(points, 1380);
    let (qmin, qmax) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    assert_eq!((min, max), (qmin, qmax), "extremes on the chart");

    // Dragging across the chart zooms in: the URL takes the custom range, and the chart
    // redraws with fewer points.
    let over = browser.wait_css("#explore-chart .u-over").await;
    let drag = MouseActions::new("mouse".into())
        .then(PointerAction::MoveToElement {
            element: over.clone(),
            duration: None,
            x: -150.0,
            y: 0.0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::MoveToElement {
            element: over,
            duration: Some(Duration::from_millis(300)),
            x: 150.0,
            y: 0.0,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    browser.client.perform_actions(drag).await.unwrap();
    assert!(
        wait_until_async(Duration::from_secs(20), async || {
            let hash = browser
                .client
                .execute("return location.hash", vec![])
                .await
                .unwrap();
            let zoomed = browser
                .client
                .find(Locator::Css("#explore-stats tr[data-points]"))
                .await
                .ok();
            let points = match zoomed {
                Some(row) => row.attr("data-points").await.ok().flatten(),
                None => None,
            };
            hash.as_str()
                .is_some_and(|h| h.contains("from=") && !h.contains("range="))
                && points
                    .and_then(|p| p.parse::<u64>().ok())
                    .is_some_and(|p| p > 0 && p < 1380)
        })
        .await,
        "dragging across the chart zooms in"
    );
    low_contrast.extend(browser.low_contrast().await);
    browser.screenshots("explore").await;

    // Quarantine: the markup is shown as text, and nothing ran.
    browser
        .client
        .goto(&format!("{base}/#/quarantine"))
        .await
        .unwrap();
    browser.wait_css("#quarantine-table code.payload").await;
    let payloads = browser
        .client
        .execute(
            "return [...document.querySelectorAll('#quarantine-table code.payload')].map(e => e.textContent)",
            vec![],
        )
        .await
        .unwrap();
    let payloads: Vec<String> = serde_json::from_value(payloads).unwrap();
    assert!(
        payloads
            .iter()
            .any(|p| p.contains("<script>window.__xss=1</script>")),
        "{payloads:?}"
    );
    assert!(
        payloads.iter().any(|p| p.contains("onerror")),
        "{payloads:?}"
    );
    let ran = browser
        .client
        .execute(
            "return [window.__xss === undefined, document.querySelectorAll('#quarantine-table script, #quarantine-table img').length]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(ran, serde_json::json!([true, 0]), "the payload did not run");
    low_contrast.extend(browser.low_contrast().await);
    browser.screenshots("quarantine").await;

    // Ingest.
    browser
        .client
        .goto(&format!("{base}/#/ingest"))
        .await
        .unwrap();
    browser.wait_css("#ingest-rate").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    low_contrast.extend(browser.low_contrast().await);
    browser.screenshots("ingest").await;

    // The benchmark's second figure: Explore with 1,000 more series in the store.
    let many: String = (0..1000)
        .map(|i| format!("picker_probe,device=p{i:04} value={i} {now}\n"))
        .collect();
    assert_eq!(write_lines(&url, &t1, many).await.status(), 204);
    let mut with_many = Vec::new();
    let mut with_one = vec![first_chart_ms];
    for round in 0..5 {
        let (ms, n, _, _) = explore_one(&browser, &base).await;
        assert_eq!(n, 1380);
        with_many.push(ms);
        if round == 0 {
            // The picker lists the first page of matches.
            browser.wait_css("#explore-results li").await;
        }
    }
    // And again for the one-series figure, after a warm-up (the collector's page cache).
    for _ in 0..4 {
        with_one.push(explore_one(&browser, &base).await.0);
    }
    with_one.sort_by(f64::total_cmp);
    with_many.sort_by(f64::total_cmp);
    println!(
        "console: Explore to first chart (24 h at 1 m, 1,380 points): median {:.0} ms (runs {with_one:?}); with 1,000 more series in the store: median {:.0} ms (runs {with_many:?})",
        with_one[with_one.len() / 2],
        with_many[with_many.len() / 2]
    );

    assert!(
        low_contrast.is_empty(),
        "text under WCAG AA contrast: {low_contrast:?}"
    );
    browser.drain_log().await;
    let errors = browser.script_errors();
    assert!(errors.is_empty(), "JavaScript errors: {errors:?}");
    drop(a1);
    collector.terminate();

    // With anonymous_read, the console asks for no token.
    let open =
        blocking(|| CollectorProcess::start(&dir.path().join("open"), &[("a1", &t1)]).unwrap());
    browser.client.goto("about:blank").await.unwrap();
    browser
        .client
        .goto(&format!("{}/", open.url().trim_end_matches('/')))
        .await
        .unwrap();
    browser.wait_css("#fleet-table tr[data-agent=\"a1\"]").await;
    let prompted = browser
        .client
        .execute("return document.getElementById('login').open", vec![])
        .await
        .unwrap();
    assert_eq!(prompted, serde_json::json!(false), "no token prompt");
    browser.client.clone().close().await.unwrap();
}

/// Polls `check` until it is true or `timeout` passes.
async fn wait_until_async(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}
