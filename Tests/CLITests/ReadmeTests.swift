// The README cannot rot: its tutorial runs as written, and its reference names every command, option and job key.
//
// The tutorial: every ```sh block of README.md runs in order, in one bash script, with the release `cairn` on
// PATH and the real model. The machines it speaks of are simulated on this one: each has a home directory of its
// own (its keys, caches and state), they share one working directory (which stands in for copying a token file
// from one machine to another), and the host name `coord-host` resolves to this machine inside a network
// namespace the test makes (its /etc/hosts, from /etc/netns), which also keeps the tutorial's fixed ports apart
// from everything else. A block is run on the machine its `<!-- run on: NAME also: OTHER … -->` comment names
// (then again for each OTHER, with NAME replaced), otherwise on coord-host. A command ending in `# → TEXT` must
// print TEXT. Needs root (network namespaces); Scripts/test runs it in release with CAIRN_REAL_MODEL set.

import Foundation
import ModelFormats
import TestSupport
import Testing

/// The README, split into what the tests need.
struct Readme {
    struct Block {
        var line: Int
        var machine: String
        var others: [String]
        var text: String
    }

    let text: String

    static func load() throws -> Readme {
        let url = Fixtures.directory.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("README.md")
        return Readme(text: try String(contentsOf: url, encoding: .utf8))
    }

    /// The ```sh blocks, in order, with the machine each runs on.
    var shellBlocks: [Block] {
        var out: [Block] = []
        let lines = text.components(separatedBy: "\n")
        var i = 0
        while i < lines.count {
            guard lines[i] == "```sh" else {
                i += 1
                continue
            }
            var machine = "coord-host"
            var others: [String] = []
            if i > 0, let on = lines[i - 1].range(of: "<!-- run on: "), let end = lines[i - 1].range(of: " -->") {
                let spec = lines[i - 1][on.upperBound..<end.lowerBound].components(separatedBy: " also: ")
                machine = spec[0].trimmingCharacters(in: .whitespaces)
                others = spec.count > 1 ? spec[1].split(separator: " ").map(String.init) : []
            }
            var body: [String] = []
            var j = i + 1
            while j < lines.count, lines[j] != "```" {
                body.append(lines[j])
                j += 1
            }
            out.append(Block(line: i + 2, machine: machine, others: others, text: body.joined(separator: "\n")))
            i = j + 1
        }
        return out
    }

    /// The text between a heading and the next heading of the same or a higher level.
    func section(_ heading: String) -> String? {
        guard let start = text.range(of: "\n" + heading + "\n") else { return nil }
        let level = heading.prefix { $0 == "#" }.count
        var rest = text[start.upperBound...]
        var end = rest.endIndex
        var search = rest.startIndex
        while let next = rest[search...].range(of: "\n#") {
            let hashes = rest[rest.index(after: next.lowerBound)...].prefix { $0 == "#" }.count
            if hashes <= level, rest[rest.index(next.lowerBound, offsetBy: hashes + 1)...].first == " " {
                end = next.lowerBound
                break
            }
            search = next.upperBound
        }
        rest = rest[..<end]
        return String(rest)
    }

    /// The tutorial as one bash script: machine switches, and checks of `# → TEXT` outputs.
    static func script(_ blocks: [Block], homes: URL, workdir: URL) -> String {
        var s = """
            set -euo pipefail
            cleanup() {
                local left
                left=$(jobs -p)
                [ -z "$left" ] && return 0
                kill $left 2>/dev/null || true
                for _ in $(seq 100); do jobs -pr | grep -q . || return 0; sleep 0.1; done
                kill -9 $left 2>/dev/null || true
            }
            trap cleanup EXIT
            expect_output() {
                if ! grep -qF -- "$2" <<<"$1"; then
                    echo "README.md:$3: the output does not contain: $2" >&2
                    exit 1
                fi
            }
            cd '\(workdir.path)'

            """
        for block in blocks {
            for machine in [block.machine] + block.others {
                let text = block.text.replacingOccurrences(of: block.machine, with: machine)
                s += "\n# README.md:\(block.line), on \(machine)\n"
                s += "export HOME='\(homes.appendingPathComponent(machine).path)'\n"
                s += "echo '### README.md:\(block.line) on \(machine)'\n"
                var continued = false
                for (k, line) in text.components(separatedBy: "\n").enumerated() {
                    let number = block.line + k
                    if !continued, let arrow = line.range(of: "# → ") {
                        let command = line[..<arrow.lowerBound].trimmingCharacters(in: .whitespaces)
                        let expected = String(line[arrow.upperBound...]).replacingOccurrences(of: "'", with: "'\\''")
                        s += "__out=$(\(command))\nprintf '%s\\n' \"$__out\"\n"
                        s += "expect_output \"$__out\" '\(expected)' \(number)\n"
                    } else {
                        s += line + "\n"
                    }
                    continued = line.hasSuffix("\\")
                }
            }
        }
        return s
    }
}

struct NamespaceError: Error, CustomStringConvertible {
    var description: String
}

/// A network namespace with its own /etc/hosts, for processes started with `ip netns exec`.
final class HostsNamespace {
    let name: String

    init(hosts: String) throws {
        name = "cairn-readme-\(getpid())"
        _ = try runCommand("/usr/sbin/ip", ["netns", "del", name])
        let add = try runCommand("/usr/sbin/ip", ["netns", "add", name])
        guard add.status == 0 else { throw NamespaceError(description: "ip netns add: \(add.stderr)") }
        _ = try runCommand("/usr/sbin/ip", ["-n", name, "link", "set", "lo", "up"])
        try FileManager.default.createDirectory(atPath: "/etc/netns/\(name)", withIntermediateDirectories: true)
        try Data(hosts.utf8).write(to: URL(fileURLWithPath: "/etc/netns/\(name)/hosts"))
    }

    deinit {
        // Whatever the tutorial left running in there goes with it.
        if let pids = try? runCommand("/usr/sbin/ip", ["netns", "pids", name]).stdout {
            for pid in pids.split(separator: "\n").compactMap({ Int32($0) }) { kill(pid, SIGKILL) }
        }
        _ = try? runCommand("/usr/sbin/ip", ["netns", "del", name])
        try? FileManager.default.removeItem(atPath: "/etc/netns/\(name)")
    }
}

@Suite(
    .enabled(
        if: ProcessInfo.processInfo.environment["CAIRN_REAL_MODEL"] != nil && getuid() == 0,
        "needs CAIRN_REAL_MODEL and root (Scripts/test as root sets both)"))
struct RealModelReadmeTests {
    @Test func theTutorialRunsAsWritten() throws {
        let model = ProcessInfo.processInfo.environment["CAIRN_REAL_MODEL"]!
        let readme = try Readme.load()
        let blocks = readme.shellBlocks
        #expect(blocks.count >= 5, "the tutorial's blocks")
        let dir = Fixtures.temporaryDirectory("cairn-readme")
        defer { try? FileManager.default.removeItem(at: dir) }
        let repo = Fixtures.directory.deletingLastPathComponent().deletingLastPathComponent()
        let work = dir.appendingPathComponent("work")
        let homes = dir.appendingPathComponent("homes")
        let bin = dir.appendingPathComponent("bin")
        let fm = FileManager.default
        for d in [work, homes, bin] { try fm.createDirectory(at: d, withIntermediateDirectories: true) }
        // The repository's files the tutorial names, as in a clone.
        for name in ["Tests", "Cluster"] {
            try fm.createSymbolicLink(
                at: work.appendingPathComponent(name), withDestinationURL: repo.appendingPathComponent(name))
        }
        try fm.createSymbolicLink(
            at: bin.appendingPathComponent("cairn"), withDestinationURL: URL(fileURLWithPath: cairnExecutable))
        // The machine you start on has the model in its cache, as Scripts/setup leaves it; the others have nothing.
        let models = homes.appendingPathComponent("coord-host/.cache/cairn/models")
        try fm.createDirectory(at: models, withIntermediateDirectories: true)
        try fm.createSymbolicLink(
            at: models.appendingPathComponent("smollm2-135m.gguf"), withDestinationURL: URL(fileURLWithPath: model))
        let script = dir.appendingPathComponent("tutorial.sh")
        try Data(Readme.script(blocks, homes: homes, workdir: work).utf8).write(to: script)

        let namespace = try HostsNamespace(hosts: "127.0.0.1 localhost coord-host\n::1 localhost\n")
        let r = try runCommand(
            "/usr/sbin/ip", ["netns", "exec", namespace.name, "/bin/bash", script.path],
            environment: [
                "PATH": bin.path + ":/usr/local/bin:/usr/bin:/bin", "CAIRN_HOME": "", "CAIRN_STATE": "",
                "CAIRN_PROGRESS_SECONDS": "30",
            ], timeout: 1500)
        let logs = ((try? fm.contentsOfDirectory(atPath: work.path)) ?? []).filter { $0.hasSuffix(".log") }.sorted()
            .map { "--- \($0)\n" + ((try? String(contentsOf: work.appendingPathComponent($0), encoding: .utf8)) ?? "") }
            .joined(separator: "\n")
        #expect(
            r.status == 0,
            "the tutorial failed:\n\(r.stdout.suffix(6000))\n\(r.stderr.suffix(6000))\n\(logs.suffix(6000))")
        // What the tutorial leaves behind.
        for file in [
            "runs/capitals/adapter_model.safetensors", "capitals.html", "capitals-cluster/adapter_config.json",
            "capitals-cluster.html", "merged/adapter_model.safetensors", "smollm2-merged.gguf",
        ] {
            #expect(fm.fileExists(atPath: work.appendingPathComponent(file).path), "\(file) was written")
        }
        guard r.status == 0 else { return }
        // Each machine kept its own files under its own home ($HOME is honoured): the coordinator's state, each
        // worker's key pair and the model each worker received.
        #expect(fm.fileExists(atPath: homes.appendingPathComponent("coord-host/.local/state/cairn/cairn.sqlite").path))
        for worker in ["worker-1", "worker-2", "worker-3"] {
            let home = homes.appendingPathComponent(worker)
            #expect(
                fm.fileExists(atPath: home.appendingPathComponent(".config/cairn/worker.json").path), "\(worker)'s key")
            let blobs = home.appendingPathComponent(".cache/cairn/worker/blobs/sha256").path
            #expect(
                ((try? fm.contentsOfDirectory(atPath: blobs)) ?? []).filter(BlobStore.isHash).count == 1,
                "\(worker) received the model")
        }

        // The adapter of part 1, measured: the base did not know the answer, the held-out loss fell to under a
        // quarter, and baked into the base (f32) it gives the same answer and the same loss within 1e-4.
        let run = work.appendingPathComponent("runs/capitals").path
        let question = "What is the capital of Veloria?"
        let env = ["CAIRN_HOME": homes.appendingPathComponent("coord-host/.cache/cairn").path]
        let before = try runCommand(cairnExecutable, ["generate", "--prompt", question], environment: env)
        #expect(before.status == 0 && !before.stdout.contains("Marnest"), "the base does not know: \(before.stdout)")
        let heldOut = Fixtures.path("smollm2/capitals-heldout.jsonl")
        func evalLoss(_ extra: [String]) throws -> Double {
            let r = try runCommand(cairnExecutable, ["eval", "--data", heldOut, "--json"] + extra, environment: env)
            return try #require(try JSONValue.parse(r.stdout).objectValue?["loss"]?.doubleValue, "\(r.stderr)")
        }
        let base = try evalLoss([])
        let tuned = try evalLoss(["--adapter", run])
        #expect(tuned < 0.25 * base, "held-out loss \(base) → \(tuned)")
        let fused = dir.appendingPathComponent("fused-f32.gguf").path
        let fuse = try runCommand(
            cairnExecutable, ["fuse", "--adapter", run, "--type", "f32", "-o", fused], environment: env)
        #expect(fuse.status == 0, "\(fuse.stderr)")
        let answer = try runCommand(
            cairnExecutable, ["generate", "--model", fused, "--prompt", question], environment: env)
        #expect(answer.stdout == "The capital of Veloria is Marnest.\n")
        let fusedLoss = try evalLoss(["--model", fused])
        #expect(abs(fusedLoss - tuned) <= 1e-4 * tuned, "fused \(fusedLoss) vs adapter \(tuned)")
    }
}

@Suite struct ReadmeReferenceTests {
    /// The command reference has a section for every command, naming each of its arguments and options.
    @Test func theReferenceNamesEveryCommandAndOption() throws {
        let readme = try Readme.load()
        let reference = try #require(readme.section("## Reference"), "README.md has a Reference")
        func commands(_ path: [String]) throws -> [[String]] {
            let help = try cairn(path + ["--help"]).stdout
            guard let list = help.components(separatedBy: "SUBCOMMANDS:").dropFirst().first else { return [path] }
            let names = list.components(separatedBy: "\n").compactMap { line -> String? in
                guard line.hasPrefix("  "), !line.hasPrefix("   "), let name = line.split(separator: " ").first else {
                    return nil
                }
                return name == "help" || name == "See" ? nil : String(name)
            }
            return try names.flatMap { try commands(path + [$0]) }
        }
        let all = try commands([])
        #expect(all.count >= 23, "every command: \(all)")
        for path in all {
            let name = (["cairn"] + path).joined(separator: " ")
            guard let section = readme.section("#### `\(name)`") else {
                Issue.record("README.md's Reference has no section #### `\(name)`")
                continue
            }
            #expect(reference.contains("#### `\(name)`"))
            let help = try cairn(path + ["--help"]).stdout.components(separatedBy: "OPTIONS:").dropFirst().joined()
            let options = Set(
                help.components(separatedBy: .whitespacesAndNewlines).compactMap { word -> String? in
                    let w = word.trimmingCharacters(in: CharacterSet(charactersIn: "[],.()"))
                    guard w.hasPrefix("--"), w.count > 2, !["--help", "--version"].contains(w) else { return nil }
                    return w.components(separatedBy: "=").first
                })
            for option in options.sorted() where !Self.mentions(section, option) {
                Issue.record("README.md: the section on `\(name)` does not mention \(option)")
            }
        }
    }

    /// Whether `text` has `option` as a whole word (`--after` is not in `--afterwards`).
    static func mentions(_ text: String, _ option: String) -> Bool {
        var rest = text[...]
        while let r = rest.range(of: option) {
            let next = rest[r.upperBound...].first
            if next.map({ !($0.isLetter || $0.isNumber || $0 == "-") }) ?? true { return true }
            rest = rest[r.upperBound...]
        }
        return false
    }

    /// The job file reference lists every key `cairn train --list-keys` knows.
    @Test func theJobFileReferenceListsEveryKey() throws {
        let readme = try Readme.load()
        let jobs = try #require(readme.section("### Job files"), "README.md has a Job files section")
        let keys = try cairn("train", "--list-keys").stdout.components(separatedBy: "\n").compactMap {
            $0.split(separator: " ").first.map(String.init)
        }
        #expect(keys.count > 30)
        for key in keys where !jobs.contains("\(key):") {
            Issue.record("README.md's Job files section does not list \(key)")
        }
    }
}
