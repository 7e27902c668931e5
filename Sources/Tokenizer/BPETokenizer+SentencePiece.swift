// BPETokenizer+SentencePiece: merging the characters of one "▁"-escaped stretch of text into SentencePiece
// tokens.
//
// By score (GGUF vocabularies, llama.cpp's llm_tokenizer_spm): start from the UTF-8 characters; repeatedly take
// the adjacent pair whose concatenated text is a token with the highest score (ties: the leftmost pair) and merge
// it; a final symbol that is not a token becomes its bytes' `<0xXX>` tokens.
// By rank (tokenizer.json, the tokenizers library's BPE with byte_fallback): a character that is not a token
// becomes its bytes' `<0xXX>` tokens first (or the unknown token when a byte token is missing), then the merges
// apply in rank order, ties to the leftmost, as for byte-level BPE.

import ModelFormats

extension BPETokenizer {
    /// The text of the byte token for `b`: `<0x0A>`.
    static func byteTokenText(_ b: UInt8) -> String {
        let hex = Array("0123456789ABCDEF")
        return "<0x\(hex[Int(b >> 4)])\(hex[Int(b & 15)])>"
    }

    /// Appends the byte tokens of a piece of text, or the unknown token where one is missing.
    private func appendByteTokens(_ bytes: ArraySlice<UInt8>, into out: inout [Int32]) {
        for b in bytes {
            let id = byteTokens[Int(b)]
            if id >= 0 {
                out.append(id)
            } else if let unknownId {
                out.append(unknownId)
            }
        }
    }

    /// llama.cpp's SentencePiece merge by score of one escaped stretch.
    func sentencePieceByScore(_ text: String) -> [Int32] {
        guard let scores = encoding.scores else { return [] }
        let utf8 = Array(text.utf8)
        // Symbols: UTF-8 characters, as byte ranges linked into a list.
        var start: [Int] = []
        var length: [Int] = []
        var i = 0
        while i < utf8.count {
            let lead = utf8[i]
            let n = lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
            let len = min(n, utf8.count - i)
            start.append(i)
            length.append(len)
            i += len
        }
        let count = start.count
        guard count > 0 else { return [] }
        var prev = Array(-1..<count - 1)
        var next = Array(1...count)
        next[count - 1] = -1
        var heap = PriorityHeap<ScoredPair>()
        func lookup(_ from: Int, _ n: Int) -> Int32? {
            id(of: String(decoding: utf8[from..<from + n], as: UTF8.self))
        }
        func tryPair(_ l: Int, _ r: Int) {
            guard l >= 0, r >= 0 else { return }
            let size = length[l] + length[r]
            guard let id = lookup(start[l], size) else { return }
            heap.push(ScoredPair(score: scores[Int(id)], left: l, right: r, size: size))
        }
        for j in 1..<count { tryPair(j - 1, j) }
        while let e = heap.pop() {
            let (l, r) = (e.left, e.right)
            guard length[l] > 0, length[r] > 0, length[l] + length[r] == e.size else { continue }
            length[l] += length[r]
            length[r] = 0
            next[l] = next[r]
            if next[r] >= 0 { prev[next[r]] = l }
            tryPair(prev[l], l)
            tryPair(l, next[l])
        }
        var out: [Int32] = []
        var s = 0
        while s >= 0 {
            if let id = lookup(start[s], length[s]) {
                out.append(id)
            } else {
                appendByteTokens(utf8[start[s]..<start[s] + length[s]], into: &out)
            }
            s = next[s]
        }
        return out
    }

    /// The tokenizers library's BPE with byte fallback, by merge rank, of one escaped stretch.
    func sentencePieceByRank(_ text: String) -> [Int32] {
        var symbols: [Int32] = []
        var lastWasUnknown = false
        for c in text.unicodeScalars {
            let piece = String(c)
            if let id = id(of: piece) {
                symbols.append(id)
                lastWasUnknown = false
            } else if piece.utf8.allSatisfy({ byteTokens[Int($0)] >= 0 }) {
                for b in piece.utf8 { symbols.append(byteTokens[Int(b)]) }
                lastWasUnknown = false
            } else if let unknownId, !lastWasUnknown {
                symbols.append(unknownId)  // fuse_unk: consecutive unknown characters become one
                lastWasUnknown = true
            }
        }
        if symbols.count > 1 { mergeSymbols(&symbols) }
        return symbols
    }
}

/// A SentencePiece merge candidate: the best score first, then the leftmost.
struct ScoredPair: HeapOrdered {
    var score: Float
    var left: Int
    var right: Int
    var size: Int
    func precedes(_ o: ScoredPair) -> Bool { score != o.score ? score > o.score : left < o.left }
}
