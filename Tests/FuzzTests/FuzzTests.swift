// The fuzz targets in the unit suite: every input a fuzzer once crashed on (Tests/Fixtures/fuzz/<target>/)
// stays fixed, the committed corpora run cleanly, and a short seeded mutation run per target finds nothing,
// so a regression in a parser's input checks shows up here even where libFuzzer is not available.

import Foundation
import HTTP
import FuzzTargets
import TestSupport
import Testing
import Wire

@Suite struct FuzzTests {
    static let corpus = Fixtures.directory.deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz/corpus")

    func files(_ dir: URL) -> [URL] {
        ((try? FileManager.default.contentsOfDirectory(at: dir, includingPropertiesForKeys: nil)) ?? [])
            .filter { !$0.lastPathComponent.hasPrefix(".") }.sorted { $0.path < $1.path }
    }

    /// Crash reproducers and the seed corpus run without crashing (a crash here fails the whole run).
    @Test(arguments: FuzzTarget.allCases) func reproducersAndCorpusRunCleanly(target: FuzzTarget) throws {
        let inputs =
            files(Fixtures.directory.appendingPathComponent("fuzz/\(target.rawValue)"))
            + files(Self.corpus.appendingPathComponent(target.rawValue))
        #expect(!files(Self.corpus.appendingPathComponent(target.rawValue)).isEmpty, "a committed corpus")
        for url in inputs { target.run(Array(try Data(contentsOf: url))) }
    }

    /// A bounded mutation run from the seeds: 3000 inputs per target.
    @Test(arguments: FuzzTarget.allCases) func mutatedSeedsDoNotCrash(target: FuzzTarget) {
        var rng = MutationRandom(seed: 11)
        let corpus = target.seeds.map(\.bytes)
        for _ in 0..<3000 {
            target.run(mutate(corpus[Int(rng.next() % UInt64(corpus.count))], corpus: corpus, rng: &rng))
        }
    }

    /// The seeds are what their parsers accept, so mutation starts past the first checks.
    @Test func seedsAreValid() throws {
        for (_, bytes) in FuzzTarget.wire.seeds { _ = try Message.decode(FuzzTarget.frames(bytes)) }
        for (_, bytes) in FuzzTarget.http.seeds { _ = try HTTPRequest.parse(bytes[...]) }
        #expect(FuzzTarget.frames(FuzzTarget.join([[1, 2], [], [3]])) == [[1, 2], [], [3]])
    }
}
