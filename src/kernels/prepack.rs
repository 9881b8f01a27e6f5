//! Weights packed once for a run of inference passes, as ONNX Runtime packs them when a
//! session is created.
//!
//! The 3×3 kernels want their weights in other layouts than PyTorch's OIHW: the
//! broadcast route as `[group][i][tap][G]` ([`super::broadcast`]), Winograd as the
//! transformed `U = G·g·Gᵀ` packed per element ([`super::winograd`]). They pack them on
//! every call, since training changes the weights every step. In evaluation the weights
//! stay put: with them packed once, a densenet121 pass took 0.952 of its time at batch 1
//! and 0.993 at batch 16 (`bench infer --ab`, Zen 4, 2 threads; 0.973 at batch 1 with
//! the `avx2` table). At batch 1 each of the 14×14 3×3's two tasks packed all 147 KB of
//! its weights on every call.
//!
//! **Why a scope, and who may open it.** A kernel asks [`packed`] for the packing of the
//! weights it was given, keyed by their address, length and layout. Outside a scope it
//! gets `None` and packs for itself, as before. Inside one ([`Packs::scope`], crate-only)
//! the first call packs into the [`Packs`] and later calls reuse that. The key says
//! nothing about the weights' *values*, so a scope is only sound while nothing can write
//! them: the only public way in is [`crate::model::Frozen`], which holds the model's
//! exclusive borrow for as long as the packs live.
//!
//! The scope is a thread-local on the thread that calls the model; kernels look their
//! packing up before their parallel regions, on that thread. A kernel that ran inside a
//! parallel region would find no scope and pack for itself: slower, never wrong.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// What a packing is of: its layout and the parameters that shape it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Layout {
    /// [`super::broadcast`]'s `[group][i][tap][G]`, for groups of `group` output channels.
    Broadcast {
        /// Output channels per group (the table's `broadcast_group`).
        group: usize,
    },
    /// [`super::winograd`]'s transformed forward weights, packed per element ξ.
    Winograd {
        /// Outputs per tile side (2: F(2×2, 3×3), 4: F(4×4, 3×3)).
        tile: usize,
    },
    /// [`super::bf16`]'s weights packed for its products' kernel
    /// ([`super::bf16::Products::pack_weights`]), 32-bit words kept as the f32 of the
    /// same bits.
    Bf16(super::bf16::Products),
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    layout: Layout,
    /// The weights' address and length: a tensor of the frozen parameter buffer.
    at: usize,
    len: usize,
}

/// Packed weights, by the tensor they were packed from. Empty until a pass inside its
/// [`scope`](Packs::scope) fills it.
#[derive(Debug, Default)]
pub struct Packs {
    map: HashMap<Key, Arc<[f32]>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Packs>> = const { RefCell::new(None) };
}

impl Packs {
    /// No packings yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes the packings take.
    pub fn bytes(&self) -> usize {
        self.map.values().map(|v| v.len() * 4).sum()
    }

    /// Packings held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Runs `f` with these packs in scope on this thread: the kernels it calls take their
    /// weights' packing from here, and leave here the ones they make. **The caller
    /// guarantees that no weight `f` convolves with changes while the packs live**
    /// (see the module notes: [`crate::model::Frozen`] does). Nested scopes restore the
    /// outer one on return, and on a panic.
    pub(crate) fn scope<R>(&mut self, f: impl FnOnce() -> R) -> R {
        struct Restore<'a> {
            packs: &'a mut Packs,
            outer: Option<Packs>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let mine = CURRENT.with(|c| c.replace(self.outer.take()));
                *self.packs = mine.unwrap_or_default();
            }
        }
        let mine = std::mem::take(self);
        let outer = CURRENT.with(|c| c.replace(Some(mine)));
        let _restore = Restore { packs: self, outer };
        f()
    }
}

/// The packing of `w` in `layout`, `len` floats that `fill` writes, from the scope's
/// [`Packs`] (made by `fill` on the first call for these weights); `None` where no
/// scope is open on this thread, and the caller packs for itself.
pub(crate) fn packed(
    layout: Layout,
    w: &[f32],
    len: usize,
    fill: impl FnOnce(&mut [f32]),
) -> Option<Arc<[f32]>> {
    let key = Key {
        layout,
        at: w.as_ptr() as usize,
        len: w.len(),
    };
    let hit = CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .map(|p| p.map.get(&key).filter(|v| v.len() == len).cloned())
    })?;
    if hit.is_some() {
        return hit;
    }
    // packed outside the borrow: `fill` may run parallel work, which must not find the
    // scope's cell borrowed
    let mut v = vec![0.0; len];
    fill(&mut v);
    let v: Arc<[f32]> = v.into();
    CURRENT.with(|c| {
        if let Some(p) = c.borrow_mut().as_mut() {
            p.map.insert(key, v.clone());
        }
    });
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_scope_no_packing() {
        let w = [1.0f32; 8];
        let got = packed(Layout::Winograd { tile: 2 }, &w, 4, |_| {
            panic!("packed outside a scope")
        });
        assert!(got.is_none());
    }

    #[test]
    fn packs_once_per_weights_and_layout() {
        let (a, b) = ([1.0f32; 8], [2.0f32; 8]);
        let mut packs = Packs::new();
        let fills = std::cell::Cell::new(0);
        let fill = |v: &mut [f32], x: f32| {
            fills.set(fills.get() + 1);
            v.fill(x);
        };
        packs.scope(|| {
            let first = packed(Layout::Winograd { tile: 2 }, &a, 4, |v| fill(v, 1.0)).unwrap();
            let again = packed(Layout::Winograd { tile: 2 }, &a, 4, |v| fill(v, 9.0)).unwrap();
            assert!(Arc::ptr_eq(&first, &again) && again[..] == [1.0; 4]);
            // other weights, another layout: packed anew
            let other = packed(Layout::Winograd { tile: 2 }, &b, 4, |v| fill(v, 2.0)).unwrap();
            let grouped = packed(Layout::Broadcast { group: 16 }, &a, 4, |v| fill(v, 3.0));
            assert_eq!((other[0], grouped.unwrap()[0]), (2.0, 3.0));
        });
        assert_eq!((fills.get(), packs.len(), packs.bytes()), (3, 3, 48));
        // a later scope with the same packs finds them
        packs.scope(|| packed(Layout::Winograd { tile: 2 }, &a, 4, |_| panic!("repacked")));
        // and after the scope, nothing is in scope
        assert!(packed(Layout::Winograd { tile: 2 }, &a, 4, |_| panic!("no scope")).is_none());
    }

    #[test]
    fn nested_scopes_restore_the_outer() {
        let w = [0.5f32; 4];
        let (mut outer, mut inner) = (Packs::new(), Packs::new());
        outer.scope(|| {
            inner.scope(|| packed(Layout::Winograd { tile: 2 }, &w, 2, |v| v.fill(1.0)));
            let v = packed(Layout::Winograd { tile: 2 }, &w, 2, |v| v.fill(2.0)).unwrap();
            assert_eq!(v[0], 2.0, "the inner scope's packing leaked into the outer");
        });
        assert_eq!((outer.len(), inner.len()), (1, 1));
    }

    #[test]
    fn a_panic_inside_keeps_the_packs() {
        let w = [0.5f32; 4];
        let mut packs = Packs::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            packs.scope(|| {
                packed(Layout::Winograd { tile: 2 }, &w, 2, |v| v.fill(1.0));
                panic!("mid-pass");
            })
        }));
        assert!(r.is_err());
        assert_eq!(packs.len(), 1);
        assert!(packed(Layout::Winograd { tile: 2 }, &w, 2, |_| {}).is_none());
    }
}
