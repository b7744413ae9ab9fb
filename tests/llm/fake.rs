//! A scriptable OpenAI-compatible server on 127.0.0.1:0: answers `POST /v1/chat/completions`
//! from a script and records every request it receives.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Any status, extra headers and a JSON body.
    Json {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        body: Value,
    },
    /// Never answer.
    Hang,
    /// A 400 naming the refused mode when the request's `response_format.type` (`none` when
    /// the key is absent) is one of `refused`, else `otherwise`.
    RefusingFormats {
        refused: Vec<&'static str>,
        otherwise: Box<Reply>,
    },
}

/// A server that answers 400 to the `refused` response formats and `otherwise` to the rest.
pub fn refusing(refused: &[&'static str], otherwise: Reply) -> Reply {
    Reply::RefusingFormats {
        refused: refused.to_vec(),
        otherwise: Box::new(otherwise),
    }
}

/// A chat completion whose message content is `content`.
pub fn chat(content: &str) -> Reply {
    chat_finishing(content, "stop")
}

/// A chat completion with the given finish reason.
pub fn chat_finishing(content: &str, finish_reason: &str) -> Reply {
    Reply::Json {
        status: 200,
        headers: vec![],
        body: json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": "fake-model",
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 45, "total_tokens": 165}
        }),
    }
}

/// An OpenAI-style error answer.
pub fn error(status: u16, headers: Vec<(&'static str, &'static str)>, message: &str) -> Reply {
    Reply::Json {
        status,
        headers,
        body: json!({"error": {"message": message, "type": "fake_error"}}),
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Received {
    /// Every message content, joined.
    pub fn all_content(&self) -> String {
        self.body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|x| x["content"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    /// The user message holding the request context, parsed.
    pub fn context(&self) -> Value {
        serde_json::from_str(self.body["messages"][1]["content"].as_str().unwrap()).unwrap()
    }

    /// `response_format.type`, `none` when the request carries no `response_format`.
    pub fn format_type(&self) -> &str {
        match self.body.get("response_format") {
            None => "none",
            Some(f) => f["type"].as_str().unwrap_or("?"),
        }
    }

    /// The JSON schema sent as `response_format`.
    pub fn schema(&self) -> &Value {
        &self.body["response_format"]["json_schema"]["schema"]
    }
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    /// Answer used once the script is empty.
    fallback: Option<Reply>,
    received: Vec<Received>,
}

#[derive(Clone)]
pub struct FakeOpenAi {
    /// Base URL including `/v1`.
    pub base_url: String,
    script: Arc<Mutex<Script>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl FakeOpenAi {
    pub async fn start(replies: impl IntoIterator<Item = Reply>) -> Self {
        let script = Arc::new(Mutex::new(Script {
            replies: replies.into_iter().collect(),
            ..Script::default()
        }));
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            script,
            task: Arc::new(task),
        }
    }

    /// Answers with `reply` whenever the script is empty.
    pub fn fallback(&self, reply: Reply) {
        self.script.lock().unwrap().fallback = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }
}

async fn answer(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut s = script.lock().unwrap();
        let received = Received {
            at: Instant::now(),
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        let mut reply = s.replies.pop_front().or_else(|| s.fallback.clone());
        while let Some(Reply::RefusingFormats { refused, otherwise }) = reply {
            let kind = received.format_type();
            reply = Some(if refused.contains(&kind) {
                error(
                    400,
                    vec![],
                    &format!("response_format `{kind}` is not supported by this server"),
                )
            } else {
                *otherwise
            });
        }
        s.received.push(received);
        reply
    };
    match reply {
        Some(Reply::Json {
            status,
            headers,
            body,
        }) => {
            let mut response =
                (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
            for (k, v) in headers {
                response.headers_mut().insert(k, v.parse().unwrap());
            }
            response
        }
        Some(Reply::Hang) => std::future::pending().await,
        Some(Reply::RefusingFormats { .. }) => unreachable!("resolved above"),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "script exhausted").into_response(),
    }
}
