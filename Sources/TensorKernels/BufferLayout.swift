// BufferLayout: the size table behind "one flat buffer per role". Parameters, gradients and optimizer moments
// each live in one FloatBuffer; a layout names the regions (llm.c's fill_in_parameter_sizes), so optimizer
// steps, averaging and serialization are single loops over one buffer.

/// A named region of a flat buffer.
public struct BufferRegion: Sendable, Hashable {
    /// The region's name, e.g. `layers.3.attn.q`.
    public var name: String
    /// The shape, outermost dimension first (row-major).
    public var shape: [Int]
    /// The offset of the first element, in elements.
    public var offset: Int
    /// The number of elements, the product of `shape`.
    public var count: Int { shape.reduce(1, *) }
}

/// An ordered table of named, non-overlapping regions packed back to back.
public struct BufferLayout: Sendable {
    /// The regions in the order they were added.
    public private(set) var regions: [BufferRegion] = []
    private var index: [String: Int] = [:]
    /// Total number of elements covered by the regions.
    public private(set) var totalCount = 0

    /// An empty layout.
    public init() {}

    /// Appends a region and returns it.
    ///
    /// - Parameters:
    ///   - name: A name not used before in this layout.
    ///   - shape: Non-negative dimensions, outermost first.
    /// - Returns: The region, with its offset.
    @discardableResult
    public mutating func add(_ name: String, _ shape: [Int]) -> BufferRegion {
        precondition(index[name] == nil, "BufferLayout: duplicate region \(name)")
        precondition(shape.allSatisfy { $0 >= 0 }, "BufferLayout: negative dimension in \(name) \(shape)")
        let region = BufferRegion(name: name, shape: shape, offset: totalCount)
        index[name] = regions.count
        regions.append(region)
        totalCount += region.count
        return region
    }

    /// The region called `name`, or nil.
    public subscript(name: String) -> BufferRegion? { index[name].map { regions[$0] } }
}
