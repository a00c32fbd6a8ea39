//! The key/value cache of one context: f32 keys and values of every past token, per layer.
//!
//! Rows are appended as tokens are processed, so memory grows with the context, up to
//! `n_ctx` tokens.

/// Keys and values of every processed token, for every layer.
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    kv_dim: usize,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// Creates an empty cache for `n_layer` layers of `kv_dim` floats per token, with room for
    /// at most `capacity` tokens.
    pub fn new(n_layer: usize, kv_dim: usize, capacity: usize) -> Self {
        KvCache { keys: vec![Vec::new(); n_layer], values: vec![Vec::new(); n_layer], kv_dim, len: 0, capacity }
    }

    /// Tokens stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns whether no token is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum tokens the cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends the keys and values of the tokens being processed (positions `len` onwards) in
    /// `layer`: `kv_dim` floats per token, one token after another.
    pub fn store(&mut self, layer: usize, keys: &[f32], values: &[f32]) {
        debug_assert_eq!(self.keys[layer].len(), self.len * self.kv_dim);
        debug_assert_eq!(keys.len(), values.len());
        self.keys[layer].extend_from_slice(keys);
        self.values[layer].extend_from_slice(values);
    }

    /// Marks the `n` tokens being processed as complete in every layer.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Keys of the first `n` positions of `layer`, `kv_dim` floats each.
    pub fn keys(&self, layer: usize, n: usize) -> &[f32] {
        &self.keys[layer][..n * self.kv_dim]
    }

    /// Values of the first `n` positions of `layer`, `kv_dim` floats each.
    pub fn values(&self, layer: usize, n: usize) -> &[f32] {
        &self.values[layer][..n * self.kv_dim]
    }

    /// Forgets every token and keeps the allocations.
    pub fn clear(&mut self) {
        for (k, v) in self.keys.iter_mut().zip(&mut self.values) {
            k.clear();
            v.clear();
        }
        self.len = 0;
    }

    /// Drops the cache rows of tokens that failed part-way, so the cache stays consistent.
    pub fn truncate_partial(&mut self) {
        let n = self.len * self.kv_dim;
        for (k, v) in self.keys.iter_mut().zip(&mut self.values) {
            k.truncate(n);
            v.truncate(n);
        }
    }

    /// Returns the bytes of keys and values stored now.
    pub fn n_bytes(&self) -> u64 {
        (2 * self.keys.len() * self.len * self.kv_dim * 4) as u64
    }
}
