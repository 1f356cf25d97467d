//! Generated WIT bindings, one module per world of `sluice:plugin@0.2.0`. Plugin crates never
//! use these directly: they implement a role trait and call its export macro. Each export macro
//! emits the component metadata of its own world only, so a component exports one role.
#![allow(missing_docs, unreachable_pub, clippy::all, reason = "generated code")]

pub mod transform_plugin {
    wit_bindgen::generate!({
        world: "transform-plugin",
        path: "wit/0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_transform_plugin",
        default_bindings_module: "sluice_sdk::bindings::transform_plugin",
    });
}

pub mod source_plugin {
    wit_bindgen::generate!({
        world: "source-plugin",
        path: "wit/0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_source_plugin",
        default_bindings_module: "sluice_sdk::bindings::source_plugin",
        with: {
            "sluice:plugin/types@0.2.0": crate::bindings::transform_plugin::sluice::plugin::types,
            "sluice:plugin/log@0.2.0": crate::bindings::transform_plugin::sluice::plugin::log,
        },
    });
}

pub mod batch_sink_plugin {
    wit_bindgen::generate!({
        world: "batch-sink-plugin",
        path: "wit/0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_batch_sink_plugin",
        default_bindings_module: "sluice_sdk::bindings::batch_sink_plugin",
        with: {
            "sluice:plugin/types@0.2.0": crate::bindings::transform_plugin::sluice::plugin::types,
            "sluice:plugin/log@0.2.0": crate::bindings::transform_plugin::sluice::plugin::log,
        },
    });
}

pub mod foreach_sink_plugin {
    wit_bindgen::generate!({
        world: "foreach-sink-plugin",
        path: "wit/0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_foreach_sink_plugin",
        default_bindings_module: "sluice_sdk::bindings::foreach_sink_plugin",
        with: {
            "sluice:plugin/types@0.2.0": crate::bindings::transform_plugin::sluice::plugin::types,
            "sluice:plugin/log@0.2.0": crate::bindings::transform_plugin::sluice::plugin::log,
        },
    });
}

/// The WIT types, shared by every world.
pub(crate) use transform_plugin::sluice::plugin::types as wit;

use crate::{BatchContext, Config, Error, Requirement, Value};

impl From<Error> for wit::PluginError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidConfig(m) => wit::PluginError::InvalidConfig(m),
            Error::InvalidInput(m) => wit::PluginError::InvalidInput(m),
            Error::Retryable(m) => wit::PluginError::Retryable(m),
            Error::Failed(m) => wit::PluginError::Failed(m),
        }
    }
}

pub(crate) fn context(c: wit::BatchContext) -> BatchContext {
    BatchContext {
        query_id: c.query_id,
        batch_id: c.batch_id,
        attempt: c.attempt,
        partition: c.partition,
        num_partitions: c.num_partitions,
        watermark_ms: c.watermark_ms,
        batch_timestamp_ms: c.batch_timestamp_ms,
    }
}

pub(crate) fn config(c: wit::Config) -> Config {
    let scalar = |s: wit::Scalar| match s {
        wit::Scalar::Str(v) => Value::Str(v),
        wit::Scalar::Boolean(v) => Value::Bool(v),
        wit::Scalar::Int(v) => Value::Int(v),
        wit::Scalar::Float(v) => Value::Float(v),
    };
    Config::new(c.into_iter().map(|(k, v)| {
        let v = match v {
            wit::Value::Str(s) => Value::Str(s),
            wit::Value::Boolean(b) => Value::Bool(b),
            wit::Value::Int(i) => Value::Int(i),
            wit::Value::Float(f) => Value::Float(f),
            wit::Value::List(items) => Value::List(items.into_iter().map(scalar).collect()),
            wit::Value::Json(j) => Value::Json(j),
        };
        (k, v)
    }))
}

pub(crate) fn requirements(r: Result<Vec<Requirement>, Error>) -> Result<Vec<wit::Requirement>, wit::PluginError> {
    Ok(r?
        .into_iter()
        .map(|r| match r {
            Requirement::Dir { guest, writable } => {
                wit::Requirement::Dir(wit::DirRequirement { guest_path: guest, writable })
            }
            Requirement::Http(h) => wit::Requirement::Http(h),
            Requirement::Socket(s) => wit::Requirement::Socket(s),
            Requirement::Env(e) => wit::Requirement::Env(e),
            Requirement::WallClock => wit::Requirement::WallClock,
        })
        .collect())
}
