// cairn report: one self-contained HTML file about a job, for a model card: the loss curves (train and held-out),
// per-worker throughput over the steps, the settings and the lineage tree. It is the dashboard's page with the
// data embedded, so it draws the same charts and needs nothing else to open.

import ArgumentParser
import Dashboard
import Foundation
import Llama
import ModelFormats
import Training
import Wire

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write one self-contained HTML file with a job's loss curves, throughput, settings and lineage.",
        discussion: """
            JOB is a cluster job id, asked of the coordinator as `cairn status` does (--state on the coordinator's \
            machine, or the credentials of `cairn client join`), or the run directory of `cairn train`. The file \
            loads nothing from elsewhere: open it offline, or attach it to a model card.

            Examples:
              cairn report job-3 -o job-3.html
              cairn report runs/capitals -o capitals.html
            """)
    @OptionGroup var client: ClientOptions
    @Argument(help: "A cluster job id, or a run directory of `cairn train`.")
    var job: String
    @Option(name: .shortAndLong, help: "The HTML file to write.")
    var output: String

    func run() throws {
        var isDirectory: ObjCBool = false
        let data: JSONObject
        if FileManager.default.fileExists(atPath: job, isDirectory: &isDirectory), isDirectory.boolValue {
            data = try Self.runDirectory(job)
        } else {
            data = try clusterJob()
        }
        let html = DashboardPage.report(data: .object(data))
        do { try writeFileAtomically(output, Array(html.utf8)) } catch { throw CLIError("\(error)") }
        let detail = data["job"]?.objectValue
        Terminal.note(
            "report of \(detail?["id"]?.stringValue ?? job): \(detail?["steps"]?.arrayValue?.count ?? 0) steps, "
                + "\(detail?["evals"]?.arrayValue?.count ?? 0) evaluations → \(output)")
    }

    static var now: String {
        let f = ISO8601DateFormatter()
        return f.string(from: Date())
    }

    /// The job as the coordinator reports it, every step fetched page by page.
    func clusterJob() throws -> JSONObject {
        let c = try client.connect()
        var steps: [JSONValue] = []
        var detail = JSONObject()
        var workers: JSONValue = .array([])
        var after = 0
        let progress = ProgressLine("report \(job)", total: nil)
        for _ in 0..<1_000_000 {
            let reply = try c.request(
                Message(.status, ["job": .string(job), "after": .integer(Int64(after))]), expect: .statusReply)
            let body = reply.metadata["body"]?.objectValue
            guard let page = body?["jobs"]?.arrayValue?.first?.objectValue else {
                throw CLIError("the coordinator sent no job \(job)")
            }
            let fetched = page["steps"]?.arrayValue ?? []
            steps += fetched
            detail = page
            workers = body?["workers"] ?? .array([])
            progress.update(steps.count, unit: "steps")
            guard page["steps_more"]?.boolValue == true, let last = fetched.last?.objectValue?["step"]?.intValue,
                last > after
            else { break }
            after = last
        }
        progress.finish()
        detail["steps"] = .array(steps)
        detail["steps_more"] = nil
        return ["generated": .string(Self.now), "job": .object(detail), "workers": workers]
    }

    /// A `cairn train` run directory in the same shapes: its job file, metrics.jsonl and adapter.
    static func runDirectory(_ dir: String) throws -> JSONObject {
        let file = { (name: String) in (dir as NSString).appendingPathComponent(name) }
        var config = TrainingConfig()
        do { try config.apply(yamlFile: file("job.yaml")) } catch {
            throw CLIError("\(dir) is not a run directory of `cairn train` (\(error.description))")
        }
        var steps: [JSONValue] = []
        var evals: [JSONValue] = []
        let text = (try? String(contentsOfFile: file("metrics.jsonl"), encoding: .utf8)) ?? ""
        for (n, line) in text.split(separator: "\n").enumerated() {
            guard let o = try? JSONValue.parse(Array(line.utf8)).objectValue, let step = o["step"]?.intValue else {
                throw CLIError("\(file("metrics.jsonl")):\(n + 1): not a metrics line")
            }
            if let loss = o["loss"]?.doubleValue {
                let tokens = o["trained_tokens"]?.intValue ?? 0
                let seconds = o["seconds"]?.doubleValue ?? 0
                steps.append([
                    "step": .integer(Int64(step)), "loss": .number(loss), "tokens": .integer(Int64(tokens)),
                    "seconds": .number(seconds),
                    "workers": ["local": ["tokens": .integer(Int64(tokens)), "seconds": .number(seconds)]],
                ])
            } else if let loss = o["eval_loss"]?.doubleValue {
                evals.append([
                    "step": .integer(Int64(step)), "loss": .number(loss),
                    "tokens": .integer(Int64(o["eval_tokens"]?.intValue ?? 0)),
                ])
            }
        }
        let done = steps.last?.objectValue?["step"]?.intValue ?? 0
        let total = config.steps > 0 ? config.steps : done
        var detail: JSONObject = [
            "id": .string((dir as NSString).lastPathComponent), "state": .string(done >= total ? "done" : "stopped"),
            "mode": "one machine", "step": .integer(Int64(done)), "total_steps": .integer(Int64(total)),
            "data": .string((config.data as NSString).lastPathComponent), "steps": .array(steps),
            "evals": .array(evals),
            "settings": .object(JSONObject(config.settings().map { ($0.key, JSONValue.string($0.value)) })),
            "worker_names": ["local": .string(ProcessInfo.processInfo.hostName)],
        ]
        if let last = steps.last?.objectValue { detail["loss"] = last["loss"] }
        if let last = evals.last?.objectValue { detail["eval_loss"] = last["loss"] }
        let recent = steps.suffix(5).compactMap(\.objectValue)
        let seconds = recent.reduce(0) { $0 + ($1["seconds"]?.doubleValue ?? 0) }
        if seconds > 0 {
            let tokens = recent.reduce(0) { $0 + ($1["tokens"]?.intValue ?? 0) }
            detail["tokens_per_second"] = .number(Double(tokens) / seconds)
        }
        let provenance =
            AdapterProvenance.recorded(inPEFTFile: file("adapter_model.safetensors")) ?? AdapterProvenance()
        var lineage = provenance.lineageNode(name: (dir as NSString).lastPathComponent, hash: provenance.adapterHash)
        lineage["base_model"] = .string(config.model)
        lineage["data"] = detail["data"]
        detail["lineage"] = .object(lineage)
        return ["generated": .string(now), "job": .object(detail)]
    }
}
