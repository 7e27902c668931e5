// A binary heap, for the merge orders of the tokenizers and the event queue of the cluster simulator.

/// What a `PriorityHeap` orders: `precedes` is true when `self` comes out first.
public protocol HeapOrdered {
    func precedes(_ other: Self) -> Bool
}

/// A binary heap that pops the element that precedes all others.
public struct PriorityHeap<Entry: HeapOrdered> {
    @usableFromInline var items: [Entry] = []

    public init() {}

    public var isEmpty: Bool { items.isEmpty }

    @inlinable
    public mutating func push(_ e: Entry) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[i].precedes(items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    @inlinable
    public mutating func pop() -> Entry? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1
                let r = l + 1
                var best = i
                if l < items.count, items[l].precedes(items[best]) { best = l }
                if r < items.count, items[r].precedes(items[best]) { best = r }
                if best == i { break }
                items.swapAt(i, best)
                i = best
            }
        }
        return first
    }
}
