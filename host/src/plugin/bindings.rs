//! Host bindings, one module per contract version, generated from `wit/` by wasmtime's
//! `bindgen!`. Which one a component uses is read from its exports when it is loaded.

/// `sluice:plugin@0.1.0`: the transform world with world-level functions and string config.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        world: "transform",
        path: "../wit/0.1.0",
        exports: { default: async },
    });
}

/// `sluice:plugin@0.2.0`: every role as an interface with resources (the `plugin-host` world is
/// their union; a component exports one of them).
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        world: "plugin-host",
        path: "../wit/0.2.0",
        exports: { default: async },
    });
}
