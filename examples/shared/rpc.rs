//! The JSON RPC of the examples, independent of the driver: one call per
//! muxado stream. The caller writes one JSON request and half-closes; the
//! server reads to EOF, answers with one JSON response and half-closes.

use serde::{Deserialize, Serialize};

/// A call: `method` applied to `params`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub method: String,
    pub params: Vec<f64>,
}

/// The answer to the request with the same `id`: a result or an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Largest request the server reads; a longer one is refused.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The server's whole logic: bytes of a request in, bytes of a response out.
pub fn answer(request: &[u8]) -> Vec<u8> {
    let response = match serde_json::from_slice::<Request>(request) {
        Err(e) => Response {
            id: 0,
            result: None,
            error: Some(format!("bad request: {e}")),
        },
        Ok(req) => {
            let result = match req.method.as_str() {
                "sum" => Ok(req.params.iter().sum()),
                "product" => Ok(req.params.iter().product()),
                "max" => req
                    .params
                    .iter()
                    .copied()
                    .reduce(f64::max)
                    .ok_or_else(|| "max of nothing".to_string()),
                other => Err(format!("unknown method {other:?}")),
            };
            Response {
                id: req.id,
                result: result.as_ref().ok().copied(),
                error: result.err(),
            }
        }
    };
    serde_json::to_vec(&response).expect("a response serializes")
}

/// The calls both examples make, and what each must answer.
pub fn calls() -> Vec<(Request, Response)> {
    let call = |id, method: &str, params: &[f64]| Request {
        id,
        method: method.into(),
        params: params.to_vec(),
    };
    let ok = |id, v| Response {
        id,
        result: Some(v),
        error: None,
    };
    vec![
        (call(1, "sum", &[1.0, 2.0, 39.0]), ok(1, 42.0)),
        (call(2, "product", &[6.0, 7.0]), ok(2, 42.0)),
        (call(3, "max", &[-1.0, 42.0, 7.5]), ok(3, 42.0)),
        (
            call(4, "divide", &[1.0, 0.0]),
            Response {
                id: 4,
                result: None,
                error: Some("unknown method \"divide\"".into()),
            },
        ),
    ]
}
