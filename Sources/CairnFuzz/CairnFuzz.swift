// cairn-fuzz: feeds arbitrary bytes to one of FuzzTargets.
//
// Built with libFuzzer (Scripts/fuzz: -sanitize=fuzzer,address -DCAIRN_LIBFUZZER), this file
// is only the LLVMFuzzerTestOneInput hook and the target comes from $CAIRN_FUZZ_TARGET. Built normally, it is a
// seeded mutation loop with no coverage feedback, for machines without libFuzzer:
//
//   cairn-fuzz TARGET [--corpus DIR] [--seconds 30] [--seed 1]   mutate the corpus' inputs for that long
//   cairn-fuzz TARGET --replay FILE…                              run inputs once (a crash's reproducer)
//   cairn-fuzz TARGET --write-seeds DIR                           write the target's seed inputs into DIR

import FuzzTargets

#if CAIRN_LIBFUZZER
    import Foundation

    let target: FuzzTarget = {
        let name = ProcessInfo.processInfo.environment["CAIRN_FUZZ_TARGET"] ?? ""
        guard let t = FuzzTarget(rawValue: name) else {
            fatalError("set CAIRN_FUZZ_TARGET to one of \(FuzzTarget.allCases.map(\.rawValue))")
        }
        return t
    }()

    func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
        target.run(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
        return 0
    }

    /// libFuzzer's entry for programs that keep their own main.
    @_silgen_name("LLVMFuzzerRunDriver")
    func runDriver(
        _ argc: UnsafeMutablePointer<CInt>,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
        _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
    ) -> CInt

    @main enum CairnFuzz {
        static func main() {
            _ = target
            var argc = CommandLine.argc
            var argv = CommandLine.unsafeArgv
            exit(runDriver(&argc, &argv) { data, size in fuzzOne(data, size) })
        }
    }
#else
    import Foundation

    /// The input in hand, where the crash handler can write it out (async-signal-safe: write(2) only).
    nonisolated(unsafe) var current = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: 1 << 20)
    nonisolated(unsafe) var currentCount = 0
    nonisolated(unsafe) var crashFD: Int32 = -1

    func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("cairn-fuzz: \(message)\n".utf8))
        exit(2)
    }

    func run(_ arguments: [String]) {
        guard let name = arguments.first, let target = FuzzTarget(rawValue: name) else {
            fail(
                "usage: cairn-fuzz \(FuzzTarget.allCases.map(\.rawValue).joined(separator: "|")) "
                    + "[--corpus DIR] [--seconds N] [--seed S] | --replay FILE… | --write-seeds DIR")
        }
        func option(_ flag: String) -> String? {
            guard let i = arguments.firstIndex(of: flag), i + 1 < arguments.count else { return nil }
            return arguments[i + 1]
        }
        if let dir = option("--write-seeds") {
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            for (seedName, bytes) in target.seeds {
                _ = FileManager.default.createFile(atPath: "\(dir)/seed-\(seedName)", contents: Data(bytes))
            }
            return
        }
        if let i = arguments.firstIndex(of: "--replay") {
            for path in arguments[(i + 1)...] {
                guard let data = FileManager.default.contents(atPath: path) else { fail("cannot read \(path)") }
                target.run(Array(data))
                print("\(path): ok")
            }
            return
        }
        let seconds = Double(option("--seconds") ?? "30") ?? 30
        var rng = MutationRandom(seed: UInt64(option("--seed") ?? "1") ?? 1)
        var corpus = target.seeds.map(\.bytes)
        if let dir = option("--corpus") {
            for file in ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() {
                if let d = FileManager.default.contents(atPath: dir + "/" + file) { corpus.append(Array(d)) }
            }
        }
        let crashFile = "crash-\(name).partial"
        crashFD = open(crashFile, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        for sig in [SIGILL, SIGTRAP, SIGSEGV, SIGABRT, SIGBUS, SIGFPE] {
            signal(sig) { s in
                _ = write(crashFD, current.baseAddress, currentCount)
                signal(s, SIG_DFL)
                raise(s)
            }
        }
        let start = Date()
        var runs = 0
        while Date().timeIntervalSince(start) < seconds {
            let input = mutate(corpus[Int(rng.next() % UInt64(corpus.count))], corpus: corpus, rng: &rng)
            currentCount = min(input.count, current.count)
            _ = UnsafeMutableBufferPointer(rebasing: current[0..<currentCount]).initialize(
                from: input.prefix(currentCount))
            target.run(input)
            runs += 1
            if runs % 64 == 0, corpus.count < 4096, input.count <= 65536 { corpus.append(input) }
        }
        close(crashFD)
        unlink(crashFile)
        print(
            "fuzz \(name): \(runs) inputs in \(String(format: "%.0f", seconds)) s, no crash (mutation loop, "
                + "\(corpus.count) inputs in its corpus)")
    }

    @main enum CairnFuzz {
        static func main() { run(Array(CommandLine.arguments.dropFirst())) }
    }
#endif
