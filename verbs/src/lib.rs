//! Safe async ibverbs for tokio (being built).
