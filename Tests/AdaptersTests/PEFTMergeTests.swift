// cairn's merges against PEFT's add_weighted_adapter on the tiny model (fixtures by Scripts/fixtures/peft_merges.py):
// each module's ΔW = s·B·A must agree where the definitions agree. PEFT's `linear` combines A and B separately
// (mean(B)·mean(A) is not the mean update); cairn's `linear` is the exact weighted sum, so there they differ, on
// purpose, and the test checks both facts.

import Adapters
import Llama
import TensorKernels
import TestSupport
import Testing

@Suite struct PEFTMergeTests {
    let config: LlamaConfig

    init() throws { config = try ModelSource.gguf(Fixtures.path("tiny-llama/a.gguf")).config() }

    func load(_ name: String) throws -> MergeInput {
        let (adapter, provenance) = try LoRAAdapter.load(path: Fixtures.path("merges/\(name)"), model: config)
        return MergeInput(name: name, adapter: adapter, provenance: provenance)
    }

    func delta(_ a: LoRAAdapter, _ m: LoRAModule) -> [Float] {
        guard let own = a.module(layer: m.layer, target: m.target) else {
            return [Float](repeating: 0, count: m.inFeatures * m.outFeatures)
        }
        return LowRankDelta(module: own, parameters: UnsafeBufferPointer(a.parameters.buffer)).dense()
    }

    /// The worst relative ΔW difference over PEFT's modules.
    func compare(_ method: MergeMethod, peft: String, rank: Int?, density: Double = 1) throws -> Double {
        let inputs = try ["a", "b", "c"].map(load)
        var options = MergeOptions(method: method)
        options.weights = [1.0, 0.6, 0.8]
        options.rank = rank
        options.density = density
        let (ours, _) = try AdapterMerge.merge(inputs, options: options)
        let theirs = try load(peft).adapter
        #expect(
            Set(ours.modules.map { "\($0.layer).\($0.target)" })
                == Set(theirs.modules.map { "\($0.layer).\($0.target)" }))
        return theirs.modules.map { relativeL2(delta(ours, $0), delta(theirs, $0)) }.max() ?? 1
    }

    @Test func catMatchesPEFT() throws { #expect(try compare(.cat, peft: "cat", rank: nil) < 1e-5) }

    @Test func svdMatchesPEFT() throws { #expect(try compare(.svd, peft: "svd", rank: 6) < 1e-4) }

    @Test func tiesSVDMatchesPEFT() throws {
        #expect(try compare(.ties, peft: "ties_svd", rank: 6, density: 0.5) < 1e-4)
    }

    @Test func magnitudePruneSVDMatchesPEFT() throws {
        #expect(try compare(.magnitudePrune, peft: "magnitude_prune_svd", rank: 6, density: 0.5) < 1e-4)
    }

    /// PEFT's linear is not the weighted sum of the updates; cairn's is.
    @Test func linearDiffersFromPEFTOnPurpose() throws {
        let a = try load("a")
        let a2 = try load("a2")
        var options = MergeOptions(method: .linear)
        options.weights = [1.0, 0.5]
        options.rank = 8
        let (ours, _) = try AdapterMerge.merge([a, a2], options: options)
        let theirs = try load("linear").adapter
        var ourWorst = 0.0
        var theirBest = Double.infinity
        for m in ours.modules {
            let exact = zip(delta(a.adapter, m), delta(a2.adapter, m)).map { $0 + 0.5 * $1 }
            ourWorst = max(ourWorst, relativeL2(delta(ours, m), exact))
            theirBest = min(theirBest, relativeL2(delta(theirs, m), exact))
        }
        #expect(ourWorst < 1e-5, "cairn's linear is the exact weighted sum")
        #expect(theirBest > 0.05, "PEFT's linear (A and B combined separately) is not")
    }
}
