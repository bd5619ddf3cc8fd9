//! `moe-opt bench --backend cuda`: the layer benchmark (dense / PPMoE / all-to-all) and the micro
//! checks (GEMMs against cuBLAS and burn, gathers and combines against memcpy and burn, NCCL
//! collectives against host-computed results).

pub mod collectives;
pub mod config;
pub mod layer;
pub mod micro;
pub mod rank;
pub mod report;
pub mod timing;

pub use config::LayerConfig;
pub use layer::run_layer;
pub use micro::{run_micro, MicroConfig};
pub use report::{
    Agreement, CollectiveRow, CopyRow, Form, FormResult, GemmRow, LayerReport, MicroReport,
};
