//! W3C trace context (`traceparent`) carried through HTTP and NATS headers, so one booking's
//! path through the services shares one trace id in every log line.

use rand::Rng;

pub const HEADER: &str = "traceparent";

/// A parsed `traceparent`: version 00, a 16-byte trace id and an 8-byte parent span id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub span_id: String,
}

impl TraceParent {
    /// A new trace, for work that arrives without one.
    pub fn new_root() -> Self {
        let mut rng = rand::thread_rng();
        TraceParent {
            trace_id: format!("{:032x}", rng.gen::<u128>().max(1)),
            span_id: format!("{:016x}", rng.gen::<u64>().max(1)),
        }
    }

    /// The same trace, one hop further (a new span id).
    pub fn child(&self) -> Self {
        TraceParent {
            trace_id: self.trace_id.clone(),
            span_id: format!("{:016x}", rand::thread_rng().gen::<u64>().max(1)),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('-');
        let (version, trace, span, _flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
        if version != "00" || !hex(trace, 32) || !hex(span, 16) {
            return None;
        }
        if trace.bytes().all(|b| b == b'0') || span.bytes().all(|b| b == b'0') {
            return None;
        }
        Some(TraceParent {
            trace_id: trace.to_ascii_lowercase(),
            span_id: span.to_ascii_lowercase(),
        })
    }

    /// Continues the trace of an HTTP request's `traceparent` header, else starts a new one.
    pub fn from_http(headers: &axum::http::HeaderMap) -> Self {
        Self::continue_or_start(headers.get(HEADER).and_then(|v| v.to_str().ok()))
    }

    /// Continues the incoming trace if there is a valid one, else starts a new one.
    pub fn continue_or_start(incoming: Option<&str>) -> Self {
        incoming
            .and_then(Self::parse)
            .map(|t| t.child())
            .unwrap_or_else(Self::new_root)
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{}-{}-01", self.trace_id, self.span_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_span() {
        let root = TraceParent::new_root();
        let parsed = TraceParent::parse(&root.to_string()).unwrap();
        assert_eq!(parsed, root);
        let child = TraceParent::continue_or_start(Some(&root.to_string()));
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
    }

    #[test]
    fn malformed_headers_start_a_new_trace() {
        assert!(TraceParent::parse("00-zz-11-01").is_none());
        assert!(
            TraceParent::parse(&format!("00-{}-{}-01", "0".repeat(32), "1".repeat(16))).is_none()
        );
        let fresh = TraceParent::continue_or_start(Some("garbage"));
        assert_eq!(fresh.trace_id.len(), 32);
    }
}
