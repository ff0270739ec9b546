//! `bertqa serve` end to end: the built binary on a loopback port, driven by a real HTTP client.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A running `bertqa serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
    agent: ureq::Agent,
}

/// An HTTP answer: status, headers we look at, JSON (or text) body.
struct Reply {
    status: u16,
    content_type: String,
    headers: Vec<(String, String)>,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status, self.text
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let log =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bertqa-serve-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("create log file");
        let child = Command::new(env!("CARGO_BIN_EXE_bertqa"))
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start bertqa serve");
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(300))
            .build();
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            agent,
        };
        server.wait_ready();
        server
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("bertqa serve exited with {status}:\n{}", self.logs());
            }
            if let Some(reply) = self.try_request("GET", "/health", None) {
                if reply.status == 200 {
                    return;
                }
                assert_eq!(reply.status, 503, "{}", reply.text);
                assert_eq!(reply.json()["error_type"], "unavailable");
            }
            assert!(
                Instant::now() < deadline,
                "not ready in time:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// None when the connection itself failed.
    fn try_request(&self, method: &str, path: &str, body: Option<&str>) -> Option<Reply> {
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("content-type", "application/json");
        let result = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(_)) => return None,
        };
        let headers = response
            .headers_names()
            .into_iter()
            .filter_map(|n| response.header(&n).map(|v| (n.clone(), v.to_string())))
            .collect();
        Some(Reply {
            status: response.status(),
            content_type: response.content_type().to_string(),
            headers,
            text: response.into_string().expect("read body"),
        })
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.try_request(method, path, body)
            .unwrap_or_else(|| panic!("{method} {path}: connection failed:\n{}", self.logs()))
    }

    fn post(&self, body: &Value) -> Reply {
        self.request("POST", "/question-answering", Some(&body.to_string()))
    }

    fn metrics(&self) -> String {
        let reply = self.request("GET", "/metrics", None);
        assert_eq!(reply.status, 200);
        reply.text
    }

    /// The value of an unlabelled (or fully labelled) sample in /metrics.
    fn metric(&self, sample: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn minilm() -> PathBuf {
    common::shared().join("models/minilm-xquad-qa")
}

/// The answers of one input in a response: an object is one answer, a list several.
fn answers_of(v: &Value) -> Vec<bertqa::Answer> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|a| serde_json::from_value(a.clone()).expect("answer object"))
            .collect(),
        other => vec![serde_json::from_value(other.clone()).expect("answer object")],
    }
}

/// The `inputs` list of a request asking the cases' questions.
fn inputs_of<'a>(cases: impl Iterator<Item = &'a common::Case>) -> Value {
    cases
        .map(|c| json!({"question": c.question, "context": c.context}))
        .collect()
}

fn case_body(case: &common::Case) -> Value {
    json!({
        "inputs": {"question": case.question, "context": case.context},
        "parameters": case.params,
    })
}

#[test]
fn bert_uncased_golden_answers_over_http() {
    let server = Arc::new(Server::start(&common::fixture("bert-uncased"), &[]));
    let golden = common::load_golden(&common::fixture("bert-uncased").join("golden.json"));
    // Every case at once, so that their windows share model calls.
    let handles: Vec<_> = golden
        .cases
        .into_iter()
        .map(|case| {
            let server = server.clone();
            std::thread::spawn(move || {
                let reply = server.post(&case_body(&case));
                assert_eq!(reply.status, 200, "{}: {}", case.id, reply.text);
                let body = reply.json();
                // One answer: an object, as the pipeline returns; several: a list.
                assert_eq!(
                    body.is_object(),
                    case.expected.len() == 1,
                    "{}: {body}",
                    case.id
                );
                common::compare_answers(&case.id, &answers_of(&body), &case.expected)
            })
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let batched = server
        .metric("bertqa_batch_size_count")
        .expect("batch count");
    let answered = server
        .metric("bertqa_requests_total{endpoint=\"/question-answering\",status=\"200\"}")
        .expect("request count");
    assert_eq!(answered, 18.0);
    assert!(batched >= 1.0);
}

#[test]
fn several_inputs_get_a_list_per_input() {
    let server = Server::start(&common::fixture("bert-uncased"), &[]);
    let golden = common::load_golden(&common::fixture("bert-uncased").join("golden.json"));
    let by_id = |id: &str| {
        golden
            .cases
            .iter()
            .find(|c| c.id == id)
            .expect("golden case")
    };
    // Default parameters (top_k 1): one object per input.
    let seeds: Vec<&common::Case> = ["seed-0", "seed-1", "seed-2"].map(by_id).to_vec();
    let inputs = inputs_of(seeds.iter().copied());
    let reply = server.post(&json!({ "inputs": inputs }));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    let items = body.as_array().expect("a list per input");
    assert_eq!(items.len(), 3);
    for (item, case) in items.iter().zip(&seeds) {
        assert!(item.is_object(), "{item}");
        let errors = common::compare_answers(&case.id, &answers_of(item), &case.expected);
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }
    // top_k 2: a list of lists.
    let paras: Vec<&common::Case> = ["para-0", "para-1", "para-2"].map(by_id).to_vec();
    let inputs = inputs_of(paras.iter().copied());
    let reply = server.post(&json!({ "inputs": inputs, "parameters": {"top_k": 2} }));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let body = reply.json();
    for (item, case) in body.as_array().expect("list").iter().zip(&paras) {
        assert_eq!(item.as_array().map(Vec::len), Some(2), "{item}");
        let errors = common::compare_answers(&case.id, &answers_of(item), &case.expected);
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }
    // A list of one input is answered as one input, as the pipeline does; `POST /` is the same.
    let one = json!({"inputs": [{"question": seeds[0].question, "context": seeds[0].context}]});
    let reply = server.request("POST", "/", Some(&one.to_string()));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.json().is_object());
    let errors =
        common::compare_answers(&seeds[0].id, &answers_of(&reply.json()), &seeds[0].expected);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn minilm_golden_sample_over_http() {
    let server = Arc::new(Server::start(&minilm(), &[]));
    let golden = common::load_golden(&minilm().join("golden-train.json"));
    let sample: Arc<Vec<common::Case>> = Arc::new(golden.cases.into_iter().step_by(37).collect());
    assert!(sample.len() >= 24);
    // Requests of up to four inputs (all cases share top_k 3), all sent at once.
    let handles: Vec<_> = (0..sample.len())
        .step_by(4)
        .map(|first| {
            let (server, sample) = (server.clone(), sample.clone());
            std::thread::spawn(move || {
                let group = &sample[first..(first + 4).min(sample.len())];
                let reply = server.post(&json!({
                    "inputs": inputs_of(group.iter()),
                    "parameters": group[0].params,
                }));
                assert_eq!(reply.status, 200, "{}", reply.text);
                let times: Vec<f64> = ["x-queue-time", "x-inference-time", "x-total-time"]
                    .iter()
                    .map(|h| {
                        let v = reply.header(h).unwrap_or_else(|| panic!("no {h} header"));
                        v.parse::<f64>().unwrap_or_else(|_| panic!("{h}: {v}"))
                    })
                    .collect();
                assert!(times.iter().all(|&t| t >= 0.0), "{times:?}");
                assert!(
                    times[2] >= times[1],
                    "total {} < inference {}",
                    times[2],
                    times[1]
                );
                let body = reply.json();
                // A list of one input is answered as that input alone.
                let results: Vec<Vec<bertqa::Answer>> = if group.len() == 1 {
                    vec![answers_of(&body)]
                } else {
                    body.as_array()
                        .expect("a list per input")
                        .iter()
                        .map(answers_of)
                        .collect()
                };
                assert_eq!(results.len(), group.len());
                group
                    .iter()
                    .zip(&results)
                    .flat_map(|(c, got)| common::compare_answers(&c.id, got, &c.expected))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

fn assert_error(reply: &Reply, status: u16, error_type: &str, mentions: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert!(
        reply.content_type.contains("json"),
        "{}",
        reply.content_type
    );
    let body = reply.json();
    let obj = body.as_object().expect("error object");
    assert_eq!(obj.len(), 2, "{body}");
    assert_eq!(obj["error_type"], error_type, "{body}");
    let message = obj["error"].as_str().expect("error message");
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

#[test]
fn errors_are_json_with_fitting_statuses() {
    let server = Server::start(
        &common::fixture("bert-uncased"),
        &[
            "--payload-limit",
            "4KB",
            "--max-client-batch-size",
            "2",
            "--max-context-chars",
            "1000",
        ],
    );
    let qa = |body: &str| server.request("POST", "/question-answering", Some(body));
    let input = json!({"question": "Who?", "context": "Ann wrote it."});

    assert_error(&qa("{\"inputs\": "), 400, "invalid_json", "not valid JSON");
    assert_error(&qa("not json"), 400, "invalid_json", "not valid JSON");
    let big = json!({"inputs": {"question": "Who?", "context": "word ".repeat(1000)}});
    assert_error(
        &qa(&big.to_string()),
        413,
        "payload_too_large",
        "4000 bytes",
    );

    let cases: Vec<(Value, &str)> = vec![
        (json!([input]), "`body`"),
        (json!({"question": "Who?"}), "`question`"),
        (json!({}), "`inputs`"),
        (json!({"inputs": "Who?"}), "`inputs`"),
        (json!({"inputs": []}), "`inputs`"),
        (
            json!({"inputs": [input, input, input]}),
            "`inputs`: 3 inputs",
        ),
        (
            json!({"inputs": {"question": "  ", "context": "Ann wrote it."}}),
            "`inputs.question`",
        ),
        (
            json!({"inputs": [input, {"question": "Who?", "context": ""}]}),
            "`inputs[1].context`",
        ),
        (json!({"inputs": {"question": "Who?"}}), "`inputs.context`"),
        (
            json!({"inputs": {"question": 3, "context": "c"}}),
            "`inputs.question`",
        ),
        (
            json!({"inputs": {"question": "Who?", "context": "x".repeat(1001)}}),
            "`inputs.context`: 1001 characters",
        ),
        (
            json!({"inputs": input, "parameters": {"top_k": 0}}),
            "`parameters.top_k`",
        ),
        (
            json!({"inputs": input, "parameters": {"topk": 2}}),
            "`parameters.topk`",
        ),
        (
            json!({"inputs": input, "parameters": {"top_k": "2"}}),
            "`parameters.top_k`",
        ),
        // Checked by the pipeline against the model.
        (
            json!({"inputs": input, "parameters": {"max_seq_len": 100000}}),
            "`parameters.max_seq_len`",
        ),
        (
            json!({"inputs": input, "parameters": {"max_seq_len": 32, "doc_stride": 64}}),
            "`parameters.doc_stride`",
        ),
    ];
    for (body, field) in &cases {
        assert_error(&server.post(body), 422, "validation", field);
    }
    assert_error(
        &server.request("GET", "/nowhere", None),
        404,
        "not_found",
        "endpoint",
    );
    assert_error(
        &server.request("GET", "/question-answering", None),
        405,
        "method_not_allowed",
        "method",
    );
    // Errors are counted by status.
    let count = |status: u16| {
        server
            .metric(&format!(
                "bertqa_requests_total{{endpoint=\"/question-answering\",status=\"{status}\"}}"
            ))
            .unwrap_or(0.0)
    };
    assert_eq!(count(400), 2.0);
    assert_eq!(count(413), 1.0);
    assert_eq!(count(422), cases.len() as f64);
    // The server still answers.
    assert_eq!(server.post(&json!({ "inputs": input })).status, 200);
}

/// A context of about `chars` characters (XQuAD paragraphs): with short windows, answering it
/// takes a while.
fn long_input(chars: usize) -> Value {
    let golden = common::load_golden(&minilm().join("golden-train.json"));
    let mut context = String::new();
    for c in golden.cases.iter() {
        if !context.contains(&c.context) {
            context.push_str(&c.context);
            context.push('\n');
        }
        if context.len() > chars {
            break;
        }
    }
    json!({"question": golden.cases[0].question, "context": context})
}

#[test]
fn a_burst_over_the_concurrency_limit_gets_429() {
    let server = Arc::new(Server::start(
        &minilm(),
        &["--max-concurrent-requests", "2"],
    ));
    let body =
        json!({"inputs": long_input(2000), "parameters": {"max_seq_len": 64, "doc_stride": 16}});
    let clients = 20;
    let barrier = Arc::new(Barrier::new(clients));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (server, barrier, body) = (server.clone(), barrier.clone(), body.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let reply = server.post(&body);
                if reply.status == 429 {
                    assert_error(&reply, 429, "overloaded", "2 concurrent requests");
                }
                reply.status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(ok + refused, clients, "{statuses:?}");
    assert!(ok >= 1 && refused >= 1, "{statuses:?}");
    // The limit frees up again.
    assert_eq!(server.post(&body).status, 200);
    assert_eq!(
        server.metric("bertqa_requests_total{endpoint=\"/question-answering\",status=\"429\"}"),
        Some(refused as f64)
    );
}

#[test]
fn health_info_metrics_and_openapi() {
    let server = Server::start(
        &common::fixture("bert-uncased"),
        &["--max-batch-tokens", "4096"],
    );
    let health = server.request("GET", "/health", None);
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");

    let info = server.request("GET", "/info", None).json();
    assert_eq!(info["model_type"], "bert");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["max_batch_tokens"], 4096);
    assert_eq!(info["max_concurrent_requests"], 512);
    assert_eq!(info["payload_limit"], 2_000_000);
    assert!(info["model_id"]
        .as_str()
        .is_some_and(|m| m.contains("bert-uncased")));

    let openapi = server.request("GET", "/openapi.json", None).json();
    assert!(openapi["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/",
        "/question-answering",
        "/health",
        "/info",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "{path} undocumented");
    }

    let before = server.metrics();
    assert!(before.contains("bertqa_queue_size 0\n"), "{before}");
    let golden = common::load_golden(&common::fixture("bert-uncased").join("golden.json"));
    let reply = server.request(
        "POST",
        "/question-answering",
        Some(&case_body(&golden.cases[0]).to_string()),
    );
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("x-request-id")
        .is_some_and(|id| !id.is_empty()));
    let metrics = server.metrics();
    for line in [
        "bertqa_requests_total{endpoint=\"/question-answering\",status=\"200\"} 1\n",
        "bertqa_request_duration_seconds_count 1\n",
        // Inputs through the model thread: the warm-up request's and this one's.
        "bertqa_queue_duration_seconds_count 2\n",
        "bertqa_inference_duration_seconds_count 2\n",
        "bertqa_requests_in_flight 0\n",
        "bertqa_queue_size 0\n",
        "# TYPE bertqa_batch_tokens histogram\n",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    // The warm-up request and this one: at least two model calls.
    assert!(server
        .metric("bertqa_batches_total")
        .is_some_and(|n| n >= 2.0));
    // A request id given by the client is kept (and logged).
    let req = server
        .agent
        .get(&format!("{}/health", server.base))
        .set("x-request-id", "trace-42")
        .call()
        .expect("health");
    assert_eq!(req.header("x-request-id"), Some("trace-42"));
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let mut server = Server::start(&minilm(), &[]);
    let input = long_input(3000);
    let body =
        json!({"inputs": [input, input], "parameters": {"max_seq_len": 48, "doc_stride": 8}});
    let base = server.base.clone();
    let agent = server.agent.clone();
    let client = std::thread::spawn(move || {
        let reply = agent
            .post(&format!("{base}/question-answering"))
            .set("content-type", "application/json")
            .send_string(&body.to_string());
        let done = Instant::now();
        (reply.map(|r| r.into_string().expect("body")), done)
    });
    // Wait until the server is working on it, then ask it to stop.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("bertqa_requests_in_flight") != Some(1.0) {
        assert!(Instant::now() < deadline, "the request never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let signalled = Instant::now();

    let (reply, done) = client.join().expect("client");
    let text = reply.unwrap_or_else(|e| panic!("request failed: {e}\n{}", server.logs()));
    assert!(
        done > signalled,
        "the request finished before SIGTERM; make it heavier"
    );
    let answers: Value = serde_json::from_str(&text).expect("JSON answers");
    let context = input["context"].as_str().expect("context");
    for item in answers.as_array().expect("a list per input") {
        let a: bertqa::Answer = serde_json::from_value(item.clone()).expect("one answer");
        let text: String = context
            .chars()
            .skip(a.start)
            .take(a.end - a.start)
            .collect();
        assert_eq!(a.answer, text);
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit}:\n{}", server.logs());
    let logs = server.logs();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(server.try_request("GET", "/health", None).is_none());
}

#[test]
fn inputs_of_a_client_that_left_are_dropped_before_compute() {
    // Ten 48-token windows per model call: a long input needs many calls.
    let server = Server::start(
        &minilm(),
        &[
            "--max-batch-tokens",
            "480",
            "--max-windows-per-request",
            "5000",
        ],
    );
    let input = long_input(12_000);
    let body = json!({"inputs": [input, input, input], "parameters": {"max_seq_len": 48, "doc_stride": 8}});
    let batches_before = server.metric("bertqa_batches_total").expect("batches");
    // The client sends the request, waits until its inputs are queued, and hangs up.
    let text = body.to_string();
    let address = server.base.trim_start_matches("http://");
    let mut client = std::net::TcpStream::connect(address).expect("connect");
    write!(
        client,
        "POST /question-answering HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{text}",
        text.len()
    )
    .expect("send the request");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("bertqa_queue_size") != Some(3.0) {
        assert!(Instant::now() < deadline, "the inputs were never queued");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.metric("bertqa_queue_size") != Some(0.0) {
        assert!(Instant::now() < deadline, "the queue never emptied");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.metric("bertqa_cancelled_inputs_total"), Some(3.0));
    // Answering would take about 3 × 100 windows / 10 per call; far fewer calls were made.
    let calls = server.metric("bertqa_batches_total").expect("batches") - batches_before;
    assert!(
        calls < 15.0,
        "{calls} model calls for a request whose client left"
    );
    // The server is fine afterwards.
    let short = json!({"inputs": {"question": "Who wrote it?", "context": "Ann wrote it."}});
    assert_eq!(server.post(&short).status, 200);
}

#[test]
fn the_page_is_served_on_get_root_and_post_root_still_answers() {
    let server = Server::start(&common::fixture("bert-uncased"), &[]);
    let page = server.request("GET", "/", None);
    assert_eq!(page.status, 200);
    assert_eq!(page.content_type, "text/html");
    assert!(page
        .header("content-type")
        .is_some_and(|t| t.contains("charset=utf-8")));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|csp| csp.contains("default-src 'none'")));
    assert!(page.text.starts_with("<!doctype html>"), "{}", page.text);
    assert!(page.text.contains("id=\"question\""));

    let golden = common::load_golden(&common::fixture("bert-uncased").join("golden.json"));
    let case = &golden.cases[0];
    let reply = server.request("POST", "/", Some(&case_body(case).to_string()));
    assert_eq!(reply.status, 200, "{}", reply.text);
    let errors = common::compare_answers(&case.id, &answers_of(&reply.json()), &case.expected);
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // Only the question counts as answered; the page is a plain GET.
    assert_eq!(
        server.metric("bertqa_requests_total{endpoint=\"/\",status=\"200\"}"),
        Some(2.0)
    );
    assert_eq!(
        server.metric("bertqa_request_duration_seconds_count"),
        Some(1.0)
    );
    assert_error(
        &server.request("PUT", "/", Some("{}")),
        405,
        "method_not_allowed",
        "method",
    );
}

/// A question that leaves no room for `doc_stride` in the window is the client's error (422,
/// with the limits in the message), never a 500 or a panic in the log.
#[test]
fn a_question_longer_than_the_window_allows_is_a_422() {
    let server = Server::start(&minilm(), &[]);
    let question = "why ".repeat(33);
    let context = long_input(5_000)["context"].clone();
    let body = json!({"inputs": {"question": question, "context": context},
        "parameters": {"max_seq_len": 48}});
    let reply = server.post(&body);
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert!(reply.text.contains("max_seq_len 48"), "{}", reply.text);
    let logs = server.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    // Absurd answer lengths mean "no limit", as in transformers.
    let body = json!({"inputs": {"question": "Who wrote it?", "context": "Ann wrote it."},
        "parameters": {"max_answer_len": u64::MAX}});
    let reply = server.post(&body);
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.text.contains("Ann"), "{}", reply.text);
}

/// A bad request sent among good ones fails alone: the good ones, batched with it, are
/// answered.
#[test]
fn a_bad_request_does_not_fail_the_requests_beside_it() {
    let server = Arc::new(Server::start(&minilm(), &[]));
    let good = long_input(3_000);
    let bad = json!({"inputs": long_input(15_000), "parameters": {"max_seq_len": 1}});
    let start = Arc::new(Barrier::new(7));
    let clients: Vec<_> = (0..7)
        .map(|i| {
            let (server, start) = (server.clone(), start.clone());
            let body = if i == 3 {
                bad.clone()
            } else {
                json!({"inputs": good.clone()})
            };
            std::thread::spawn(move || {
                start.wait();
                server.post(&body)
            })
        })
        .collect();
    let replies: Vec<Reply> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for (i, reply) in replies.iter().enumerate() {
        let want = if i == 3 { 422 } else { 200 };
        assert_eq!(reply.status, want, "request {i}: {}", reply.text);
    }
}

/// A raw HTTP reply: status, headers and body bytes (which may be compressed).
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Server {
    /// A request with extra headers over a plain socket, its body read as the bytes sent (an
    /// HTTP client library would decompress it and drop `content-encoding`).
    fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> RawReply {
        let address = self.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes()).expect("send");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut bytes).expect("read the reply");
        let split = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers: {}", String::from_utf8_lossy(&bytes)));
        let head = String::from_utf8(bytes[..split].to_vec()).expect("ASCII headers");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {head}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut reply = RawReply {
            status,
            headers,
            body: bytes[split + 4..].to_vec(),
        };
        if reply.header("transfer-encoding") == Some("chunked") {
            reply.body = dechunk(&reply.body);
        }
        reply
    }
}

/// The data of an HTTP/1.1 chunked body.
fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = std::str::from_utf8(&bytes[..line_end]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

fn gunzip(bytes: &[u8]) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(bytes), &mut text)
        .expect("a gzip stream of UTF-8 text");
    text
}

/// Responses are gzip-compressed for clients that accept it (and only for them), and a
/// client's request id that is not short and printable is replaced by a fresh one.
#[test]
fn responses_are_compressed_when_asked_and_request_ids_are_checked() {
    let server = Server::start(&common::fixture("bert-uncased"), &[]);
    let gzip = [("accept-encoding", "gzip")];
    let plain = server.raw("GET", "/openapi.json", &[], "");
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-encoding"), None);
    let packed = server.raw("GET", "/openapi.json", &gzip, "");
    assert_eq!(packed.status, 200);
    assert_eq!(packed.header("content-encoding"), Some("gzip"));
    assert!(
        packed.body.len() * 3 < plain.body.len(),
        "barely compressed"
    );
    assert_eq!(gunzip(&packed.body).as_bytes(), plain.body);

    let golden = common::load_golden(&common::fixture("bert-uncased").join("golden.json"));
    let body = case_body(&golden.cases[0]).to_string();
    let answer = server.raw("POST", "/question-answering", &gzip, &body);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-encoding"), Some("gzip"));
    assert!(answer.header("x-total-time").is_some());
    let answers = answers_of(&serde_json::from_str(&gunzip(&answer.body)).expect("JSON"));
    let errors = common::compare_answers(&golden.cases[0].id, &answers, &golden.cases[0].expected);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // Errors too keep their JSON shape.
    let error = server.raw("POST", "/question-answering", &gzip, "{\"inputs\": []}");
    assert_eq!(error.status, 422);
    let error: Value = serde_json::from_str(&gunzip(&error.body)).expect("JSON error");
    assert_eq!(error["error_type"], "validation");

    for bad in ["has space", "semi;colon", &"x".repeat(200)] {
        let reply = server.raw("GET", "/health", &[("x-request-id", bad)], "");
        let id = reply.header("x-request-id").expect("a request id");
        assert_ne!(id, bad);
        assert!(!id.is_empty() && id.contains('-'), "{id}");
    }
    let kept = server.raw("GET", "/health", &[("x-request-id", "abc-1.2:3_x")], "");
    assert_eq!(kept.header("x-request-id"), Some("abc-1.2:3_x"));
    // Without CORS options, no page elsewhere may call the API.
    let preflight = server.raw(
        "OPTIONS",
        "/question-answering",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
        ],
        "",
    );
    assert_eq!(preflight.header("access-control-allow-origin"), None);
    let cross = server.raw(
        "POST",
        "/question-answering",
        &[("origin", "https://app.example")],
        &body,
    );
    assert_eq!(cross.status, 200);
    assert_eq!(cross.header("access-control-allow-origin"), None);
}

#[test]
fn cors_allows_the_given_origins_only() {
    let server = Server::start(
        &common::fixture("bert-uncased"),
        &[
            "--cors-allow-origin",
            "https://app.example",
            "--cors-allow-origin",
            "http://localhost:3000",
        ],
    );
    let preflight = |origin: &str| {
        server.raw(
            "OPTIONS",
            "/question-answering",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            "",
        )
    };
    let allowed = preflight("https://app.example");
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(allowed
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    assert!(allowed
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("content-type")));
    assert_eq!(
        preflight("https://other.example").header("access-control-allow-origin"),
        None
    );

    let body =
        json!({"inputs": {"question": "Who wrote it?", "context": "Ann wrote it."}}).to_string();
    let cross = server.raw(
        "POST",
        "/question-answering",
        &[("origin", "http://localhost:3000")],
        &body,
    );
    assert_eq!(cross.status, 200);
    assert_eq!(
        cross.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    // The page of that origin may read the timing headers and the request id.
    let exposed = cross
        .header("access-control-expose-headers")
        .unwrap_or_default();
    for h in [
        "x-request-id",
        "x-queue-time",
        "x-inference-time",
        "x-total-time",
    ] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
    let other = server.raw(
        "POST",
        "/question-answering",
        &[("origin", "https://other.example")],
        &body,
    );
    assert_eq!(other.header("access-control-allow-origin"), None);

    let any = Server::start(
        &common::fixture("bert-uncased"),
        &["--cors-allow-origin", "*"],
    );
    let reply = any.raw(
        "GET",
        "/info",
        &[("origin", "https://anywhere.example")],
        "",
    );
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn bad_cors_origins_and_timeouts_are_refused_before_loading() {
    for (flag, value, says) in [
        (
            "--cors-allow-origin",
            "https://app.example/",
            "not an origin",
        ),
        ("--cors-allow-origin", "app.example", "not an origin"),
        ("--request-timeout", "0s", "more than zero"),
        ("--request-timeout", "10", "60s"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_bertqa"))
            .args([
                "serve",
                "--model",
                "/nonexistent/model",
                "--port",
                "0",
                flag,
                value,
            ])
            .output()
            .expect("run bertqa serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains("error"), "{stderr}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A request that takes longer than `--request-timeout` is answered 503 `timeout`, and its
/// inputs leave the queue instead of being computed for no one.
#[test]
fn a_request_over_the_timeout_gets_503_and_its_inputs_are_withdrawn() {
    // One thread: about 800 windows of 48 tokens take several seconds on any machine, while
    // tokenizing them takes a fraction of the second allowed.
    let server = Server::start(
        &minilm(),
        &[
            "--request-timeout",
            "1s",
            "--max-batch-tokens",
            "480",
            "--threads",
            "1",
            "--max-windows-per-request",
            "5000",
        ],
    );
    let input = long_input(30_000);
    let body = json!({"inputs": [input, input, input], "parameters": {"max_seq_len": 48, "doc_stride": 8}});
    let started = Instant::now();
    let reply = server.post(&body);
    let waited = started.elapsed();
    assert_error(&reply, 503, "timeout", "1s (--request-timeout)");
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("bertqa_queue_size") != Some(0.0) {
        assert!(Instant::now() < deadline, "the queue never emptied");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.metric("bertqa_cancelled_inputs_total"), Some(3.0));
    assert_eq!(server.metric("bertqa_requests_in_flight"), Some(0.0));
    assert_eq!(
        server.metric("bertqa_requests_total{endpoint=\"/question-answering\",status=\"503\"}"),
        Some(1.0)
    );
    // A request within the limit is answered.
    let short = json!({"inputs": {"question": "Who wrote it?", "context": "Ann wrote it."}});
    assert_eq!(server.post(&short).status, 200);
}

#[test]
fn documents_endpoint_answers_over_the_index() {
    let work = common::TempDir::new("serve-index");
    let index_dir = work.join("index");
    let data = common::shared().join("data/xquad-en-train.json");
    let mut index = bertqa::index::Index::open_or_create(&index_dir, &Default::default())
        .expect("create index");
    index.add(&[&data], |_| {}).expect("index xquad");
    // The same answers as the library gives.
    let question = "How many points did the Panthers defense give up?";
    let options = bertqa::index::AskOptions {
        params: bertqa::QaParams {
            top_k: Some(2),
            ..Default::default()
        },
        ..Default::default()
    };
    let qa = common::load_pipeline(&minilm());
    let expected = qa
        .answer_over(&index, &[question], &options)
        .expect("answer");
    drop(index);

    let server = Server::start(&minilm(), &["--index", index_dir.to_str().unwrap()]);
    let path = "/documents/question-answering";
    let body = json!({"inputs": {"question": question}, "parameters": {"top_k": 2}});
    let reply = server.request("POST", path, Some(&body.to_string()));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.header("x-inference-time").is_some());
    let got = reply.json();
    assert_eq!(got["passages_read"], 3);
    let want = serde_json::to_value(&expected[0]).unwrap();
    assert_eq!(got["answers"].as_array().unwrap().len(), 2);
    for (g, w) in got["answers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want["answers"].as_array().unwrap())
    {
        for key in ["answer", "start", "end", "doc_id", "title", "path"] {
            assert_eq!(g[key], w[key], "{key}");
        }
        let (gs, ws) = (g["score"].as_f64().unwrap(), w["score"].as_f64().unwrap());
        assert!((gs - ws).abs() < 1e-4, "score {gs} vs {ws}");
    }

    // No searchable word: an empty list and the reason.
    let reply = server.request(
        "POST",
        path,
        Some(&json!({"inputs": {"question": "?!"}}).to_string()),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["answers"], json!([]));
    assert_eq!(
        reply.json()["reason"],
        "the question has no word to search for"
    );
    // Bad bodies name the field.
    let bad = json!({"inputs": {"question": "Who?"}, "parameters": {"passages": 0}});
    let reply = server.request("POST", path, Some(&bad.to_string()));
    assert_error(&reply, 422, "validation", "parameters.passages");
    for (body, status, error_type, mentions) in [
        (
            r#"{"inputs": {"question""#.to_string(),
            400,
            "invalid_json",
            "not valid JSON",
        ),
        (
            json!({"inputs": {"question": "  "}}).to_string(),
            422,
            "validation",
            "inputs.question",
        ),
        (
            json!({"inputs": {"question": "Who?"}, "parameters": {"top_k": 0}}).to_string(),
            422,
            "validation",
            "parameters.top_k",
        ),
        (
            json!({"inputs": {"question": "Who?"}, "parameters": {"top_k": u64::MAX}}).to_string(),
            422,
            "validation",
            "from 1 to 100",
        ),
        (
            json!({"inputs": {"question": "Who?", "context": "c"}}).to_string(),
            422,
            "validation",
            "inputs.context",
        ),
    ] {
        let reply = server.request("POST", path, Some(&body));
        assert_error(&reply, status, error_type, mentions);
    }

    // It shows in /info, /openapi.json and the metrics.
    let info = server.request("GET", "/info", None).json();
    assert_eq!(info["index"]["passages"], 190);
    let openapi = server.request("GET", "/openapi.json", None).json();
    assert!(openapi["paths"][path].is_object());
    assert!(server
        .metrics()
        .contains("endpoint=\"/documents/question-answering\""));

    // Without --index the endpoint says how to get one.
    drop(server);
    let plain = Server::start(&minilm(), &[]);
    let reply = plain.request("POST", path, Some(&body.to_string()));
    assert_error(&reply, 404, "not_found", "--index");
    assert_eq!(
        plain.request("GET", "/info", None).json()["index"],
        Value::Null
    );
}

/// The address (`127.0.0.1:port`) of a server.
fn address(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Sends `head` (a request line and headers, without the blank line) and `body` on a new
/// connection asking to close it after, and reads the answer: status and body.
fn raw(server: &Server, head: &str, body: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address(server)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    write!(
        stream,
        "{head}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn error_type_of(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (
        v["error_type"].as_str().unwrap_or_default().to_string(),
        v["error"].as_str().unwrap_or_default().to_string(),
    )
}

/// A page of another site cannot post a question as a "simple" cross-site request (no CORS
/// preflight): those bodies are text/plain or forms, and only JSON is read.
#[test]
fn question_bodies_must_be_sent_as_json() {
    let server = Server::start(&common::fixture("bert-uncased"), &[]);
    let body = json!({"inputs": {"question": "Who wrote it?", "context": "Ann wrote it."}});
    let send = |content_type: Option<&str>, path: &str| {
        let mut req = server.agent.post(&format!("{}{path}", server.base));
        if let Some(t) = content_type {
            req = req.set("content-type", t);
        }
        let response = match req.send_string(&body.to_string()) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{e}"),
        };
        (response.status(), response.into_string().expect("body"))
    };
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        None,
    ] {
        for path in ["/question-answering", "/"] {
            let (status, text) = send(content_type, path);
            assert_eq!(status, 415, "{content_type:?} {path}: {text}");
            let (kind, message) = error_type_of(&text);
            assert_eq!(kind, "unsupported_media_type");
            assert!(message.contains("application/json"), "{message}");
        }
    }
    for content_type in ["application/json", "Application/JSON; charset=utf-8"] {
        let (status, text) = send(Some(content_type), "/question-answering");
        assert_eq!(status, 200, "{content_type}: {text}");
        assert!(text.contains("\"answer\""), "{text}");
    }
    // Refused before the model: only the two answered questions reached it.
    assert_eq!(
        server.metric("bertqa_requests_total{endpoint=\"/question-answering\",status=\"415\"}"),
        Some(6.0)
    );
}

/// A page whose name an attacker re-resolves to 127.0.0.1 (DNS rebinding) sends its own name
/// as Host; the server answers loopback names only, unless told more.
#[test]
fn hosts_other_than_loopback_names_are_refused_unless_allowed() {
    let server = Server::start(
        &common::fixture("bert-uncased"),
        &["--allowed-hosts", "qa.example.com"],
    );
    let port = address(&server)
        .rsplit_once(':')
        .expect("port")
        .1
        .to_string();
    let question =
        json!({"inputs": {"question": "Who wrote it?", "context": "Ann wrote it."}}).to_string();
    for host in [
        "attacker.example",
        &format!("attacker.example:{port}"),
        "10.1.2.3",
    ] {
        for (head, body) in [
            (format!("GET /info HTTP/1.1\r\nhost: {host}"), ""),
            (format!("GET / HTTP/1.1\r\nhost: {host}"), ""),
            (
                format!(
                    "POST /question-answering HTTP/1.1\r\nhost: {host}\r\n\
                     content-type: application/json"
                ),
                question.as_str(),
            ),
        ] {
            let (status, text) = raw(&server, &head, body);
            assert_eq!(status, 421, "{head}: {text}");
            let (kind, message) = error_type_of(&text);
            assert_eq!(kind, "host_not_allowed");
            assert!(message.contains("--allowed-hosts"), "{message}");
        }
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "[::1]".to_string(),
        "QA.example.com".to_string(),
    ] {
        let (status, text) = raw(&server, &format!("GET /info HTTP/1.1\r\nhost: {host}"), "");
        assert_eq!(status, 200, "{host}: {text}");
        let (status, text) = raw(
            &server,
            &format!(
                "POST /question-answering HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json"
            ),
            &question,
        );
        assert_eq!(status, 200, "{host}: {text}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_bertqa"))
        .args([
            "serve",
            "--model",
            "nowhere",
            "--allowed-hosts",
            "http://x.example",
        ])
        .output()
        .expect("run bertqa");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--allowed-hosts"));
}

/// A client that sends its request head byte by byte, half a head, nothing at all, or nothing
/// more after an answer, is closed after --header-read-timeout.
#[test]
fn slow_silent_and_idle_connections_are_closed() {
    use std::io::Read;
    use std::net::TcpStream;
    let server = Server::start(
        &common::fixture("bert-uncased"),
        &["--header-read-timeout", "1s"],
    );
    let addr = address(&server);
    let open = || {
        let s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(8)))
            .expect("read timeout");
        s
    };
    let started = Instant::now();
    let silent = open();
    let mut half = open();
    half.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .expect("send half a head");
    let mut idle = open();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .expect("send a request");
    let slow = open();
    let mut writer = slow.try_clone().expect("clone");
    let trickle = std::thread::spawn(move || {
        // One byte every 100 ms: a 1,000-byte head would take 100 s.
        for b in std::iter::repeat_n(b'x', 1000) {
            std::thread::sleep(Duration::from_millis(100));
            if writer.write_all(&[b]).is_err() {
                return;
            }
        }
    });
    for (name, mut stream) in [
        ("silent", silent),
        ("half a head", half),
        ("idle", idle),
        ("slow", slow),
    ] {
        // Everything the server sends (the answer of `idle`) up to its close.
        let mut got = Vec::new();
        let result = stream.read_to_end(&mut got);
        let waited = started.elapsed();
        assert!(
            result.is_ok()
                || result
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{name}: not closed after {waited:?}: {result:?}"
        );
        assert!(
            waited < Duration::from_secs(5),
            "{name}: closed after {waited:?}"
        );
        let text = String::from_utf8_lossy(&got);
        if name == "idle" {
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        } else {
            assert!(text.is_empty(), "{name}: {text}");
        }
    }
    trickle.join().expect("trickle");
    assert_eq!(server.request("GET", "/health", None).status, 200);
}

/// Past --max-connections, the next connection waits (unanswered) until one closes.
#[test]
fn connections_over_the_cap_wait_for_one_to_close() {
    use std::io::Read;
    use std::net::TcpStream;
    let server = Server::start(
        &common::fixture("bert-uncased"),
        &["--max-connections", "2", "--header-read-timeout", "60s"],
    );
    // Server::start's readiness checks leave no connection open (ureq's pool aside: use a
    // fresh agent's connections only through raw sockets from here).
    let addr = address(&server);
    let holders: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&addr).expect("the kernel still accepts");
    third
        .write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .expect("send");
    third
        .set_read_timeout(Some(Duration::from_millis(800)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    let early = third.read(&mut buf);
    assert!(
        early.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "answered beyond the cap: {early:?} {:?}",
        String::from_utf8_lossy(&buf)
    );
    drop(holders);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut answer = Vec::new();
    third
        .read_to_end(&mut answer)
        .expect("answered once one closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Inputs that make more windows than --max-windows-per-request are refused before the model
/// sees any of them.
#[test]
fn a_request_over_the_window_limit_is_refused_before_any_model_call() {
    let server = Server::start(&minilm(), &["--max-windows-per-request", "20"]);
    let input = long_input(5_000);
    let params = json!({"max_seq_len": 48, "doc_stride": 8});
    let batches = server.metric("bertqa_batches_total");
    for body in [
        json!({"inputs": input, "parameters": params}),
        // Many short inputs count together.
        json!({"inputs": vec![long_input(400); 20], "parameters": params}),
    ] {
        let reply = server.post(&body);
        assert_error(
            &reply,
            413,
            "payload_too_large",
            "limit of 20 per request (--max-windows-per-request)",
        );
    }
    assert_eq!(server.metric("bertqa_batches_total"), batches);
    let info = server.request("GET", "/info", None).json();
    assert_eq!(info["max_windows_per_request"], 20);
    let short = json!({"inputs": {"question": "Who wrote it?", "context": "Ann wrote it."}});
    assert_eq!(server.post(&short).status, 200);
}

/// A small request sent while a large one is being answered shares the next model calls
/// with it, instead of waiting for all of the large one's windows.
#[test]
fn a_small_request_is_not_held_up_behind_a_large_one() {
    // One thread and ten 48-token windows per call: the large request takes many calls.
    let server = Arc::new(Server::start(
        &minilm(),
        &[
            "--max-batch-tokens",
            "480",
            "--threads",
            "1",
            "--max-windows-per-request",
            "5000",
        ],
    ));
    let params = json!({"max_seq_len": 48, "doc_stride": 8});
    let large = json!({"inputs": [long_input(12_000), long_input(12_000)], "parameters": params});
    let client = {
        let server = server.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let reply = server.post(&large);
            (reply.status, started.elapsed(), Instant::now())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("bertqa_queue_size") != Some(2.0) {
        assert!(
            Instant::now() < deadline,
            "the large request was never queued"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let small = json!({"inputs": {"question": "Who wrote it?", "context": "Ann wrote it."},
        "parameters": params});
    let started = Instant::now();
    let reply = server.post(&small);
    let small_took = started.elapsed();
    let small_done = Instant::now();
    assert_eq!(reply.status, 200, "{}", reply.text);
    let (status, large_took, large_done) = client.join().expect("large client");
    assert_eq!(status, 200);
    assert!(
        small_done < large_done && small_took * 4 < large_took,
        "the small request took {small_took:?}, the large one {large_took:?}"
    );
}

/// /info names a local model by its folder, not by the host's path to it, unless asked to.
#[test]
fn info_shows_no_host_paths_unless_asked() {
    let model = std::fs::canonicalize(common::fixture("bert-uncased")).expect("fixture");
    let server = Server::start(&model, &[]);
    let info = server.request("GET", "/info", None).json();
    assert_eq!(info["model_id"], "bert-uncased", "{info}");
    assert!(!info
        .to_string()
        .contains(model.to_str().expect("utf-8 path")));
    drop(server);
    let server = Server::start(&model, &["--show-paths"]);
    let info = server.request("GET", "/info", None).json();
    assert_eq!(info["model_id"], model.to_str().expect("utf-8 path"));
}
