//! Per-channel batch statistics, computed once when a buffer's channels are written and
//! shared by every batch norm that normalises them.

use super::arena::{Buf, Carver};

/// Per-channel batch statistics of a buffer, computed once when the channels are written.
#[derive(Debug, Default)]
pub struct ChannelStats {
    /// Batch mean per channel.
    pub mean: Buf<f32>,
    /// Biased batch variance per channel.
    pub var: Buf<f32>,
    /// 1/√(var + ε).
    pub rstd: Buf<f32>,
}

impl ChannelStats {
    /// Zeroed statistics of `c` channels in three regions `{name}.mean`, `.var`, `.rstd`.
    pub fn carve(carver: &mut Carver, name: &str, c: usize) -> Self {
        ChannelStats {
            mean: carver.take(format_args!("{name}.mean"), c),
            var: carver.take(format_args!("{name}.var"), c),
            rstd: carver.take(format_args!("{name}.rstd"), c),
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
