//! Per-channel batch statistics, computed once when a buffer's channels are written and
//! shared by every batch norm that normalises them.

/// Per-channel batch statistics of a buffer, computed once when the channels are written.
#[derive(Clone, Debug, Default)]
pub struct ChannelStats {
    /// Batch mean per channel.
    pub mean: Vec<f32>,
    /// Biased batch variance per channel.
    pub var: Vec<f32>,
    /// 1/√(var + ε).
    pub rstd: Vec<f32>,
}

impl ChannelStats {
    /// Zeroed statistics of `c` channels.
    pub fn new(c: usize) -> Self {
        ChannelStats {
            mean: vec![0.0; c],
            var: vec![0.0; c],
            rstd: vec![0.0; c],
        }
    }
    /// Computes the statistics of channels `c0..c1` of `x: [C][len]`.
    pub fn compute(&mut self, x: &[f32], c0: usize, c1: usize, len: usize) {
        use crate::ops::norm::{channel_stats, rstd_from_var};
        channel_stats(
            &mut self.mean[c0..c1],
            &mut self.var[c0..c1],
            &x[c0 * len..c1 * len],
            len,
        );
        rstd_from_var(&mut self.rstd[c0..c1], &self.var[c0..c1]);
    }
}
