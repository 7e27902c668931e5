// InferenceState: the key/value cache and scratch activations of a forward pass without gradients.
//
// Layouts: the cache of layer l holds, for each of B sequences, `capacity` positions of kvDim values,
// (layers, B, capacity, kvDim) row-major, filled for positions 0..<length. Scratch buffers hold one chunk of
// up to B × maxChunk new tokens and are reused by every layer.

import TensorKernels

/// A KV cache and scratch space for `batch` sequences of up to `capacity` positions.
public final class InferenceState: @unchecked Sendable {
    /// Sequences processed together.
    public let batch: Int
    /// Positions the cache holds per sequence.
    public let capacity: Int
    /// Largest number of new tokens per sequence in one forward call.
    public let maxChunk: Int
    /// Positions already in the cache (the same for every sequence).
    public internal(set) var length = 0

    let keys: FloatBuffer
    let values: FloatBuffer
    let x: FloatBuffer
    let normed: FloatBuffer
    let q: FloatBuffer
    let k: FloatBuffer
    let v: FloatBuffer
    let attention: FloatBuffer
    let gate: FloatBuffer
    let up: FloatBuffer
    /// (rows, max(dim, qDim)): q/k norm inputs, the attention and feed-forward outputs before their post-norms.
    let scratch: FloatBuffer
    let positions: UnsafeMutablePointer<Int32>
    let kvDim: Int

    /// Allocates the cache and scratch for a model.
    ///
    /// - Parameters:
    ///   - config: The model's configuration.
    ///   - batch: Sequences per call.
    ///   - capacity: Positions to cache per sequence (at most the context length).
    ///   - maxChunk: Most new tokens per sequence in one call (prompt processing is chunked to this).
    public init(config: LlamaConfig, batch: Int, capacity: Int, maxChunk: Int = 256) {
        precondition(batch > 0 && capacity > 0 && maxChunk > 0, "InferenceState: sizes must be positive")
        self.batch = batch
        self.capacity = capacity
        self.maxChunk = min(maxChunk, capacity)
        kvDim = config.kvDim
        let rows = batch * self.maxChunk
        keys = FloatBuffer(count: config.layers * batch * capacity * config.kvDim)
        values = FloatBuffer(count: config.layers * batch * capacity * config.kvDim)
        x = FloatBuffer(count: rows * config.dim)
        normed = FloatBuffer(count: rows * config.dim)
        q = FloatBuffer(count: rows * config.qDim)
        k = FloatBuffer(count: rows * config.kvDim)
        v = FloatBuffer(count: rows * config.kvDim)
        attention = FloatBuffer(count: rows * config.qDim)
        gate = FloatBuffer(count: rows * config.ffnDim)
        up = FloatBuffer(count: rows * config.ffnDim)
        scratch = FloatBuffer(count: config.qkNorm || config.postNorms ? rows * max(config.dim, config.qDim) : 0)
        positions = .allocate(capacity: rows)
    }

    deinit { positions.deallocate() }

    /// Forgets the cached positions.
    public func reset() { length = 0 }
}
