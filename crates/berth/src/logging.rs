//! Log output in runc's two formats, so tools that parse runc's log (containerd reads the
//! JSON lines of `--log`) read berth's the same way.
//!
//! text: `time="2026-01-01T00:00:00Z" level=error msg="container does not exist"`
//! json: `{"level":"error","msg":"container does not exist","time":"2026-01-01T00:00:00Z"}`

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Writes each event as one line to `sink`.
pub struct LineLayer {
    sink: Mutex<Box<dyn Write + Send>>,
    format: Format,
    max_level: Level,
}

struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        metadata.level() <= &self.max_level
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().level() > &self.max_level {
            return;
        }
        let mut visitor = MessageVisitor { message: String::new(), fields: String::new() };
        event.record(&mut visitor);
        let message = format!("{}{}", visitor.message, visitor.fields);
        let time = berth_runtime::state::rfc3339(std::time::SystemTime::now());
        let level = level_name(event.metadata().level());
        let line = match self.format {
            Format::Text => format!("time={time:?} level={level} msg={message:?}\n"),
            Format::Json => {
                format!("{}\n", serde_json::json!({"level": level, "msg": message, "time": time}))
            }
        };
        if let Ok(mut sink) = self.sink.lock() {
            let _ = sink.write_all(line.as_bytes());
            let _ = sink.flush();
        }
    }
}

/// Installs the global subscriber: `debug` lowers the threshold from warnings to debug.
pub fn init(sink: Box<dyn Write + Send>, format: Format, debug: bool) {
    let max_level = if debug { Level::DEBUG } else { Level::WARN };
    let layer = LineLayer { sink: Mutex::new(sink), format, max_level };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}
