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
        var steps: [StepStatus] = []
        var detail: JobStatus?
        var workers: [WorkerStatus] = []
        var after = 0
        let progress = ProgressLine("report \(job)", total: nil)
        for _ in 0..<1_000_000 {
            let reply = try c.request(StatusRequest(job: job, after: after).message, expect: .statusReply)
            let body: StatusBody
            do { body = try StatusBody(json: reply.metadata["body"] ?? .null) } catch {
                throw CLIError("bad status from the coordinator: \(error)")
            }
            guard let page = body.jobs.first else { throw CLIError("the coordinator sent no job \(job)") }
            let fetched = page.steps ?? []
            steps += fetched
            detail = page
            workers = body.workers
            progress.update(steps.count, unit: "steps")
            guard page.stepsMore == true, let last = fetched.last?.step, last > after else { break }
            after = last
        }
        progress.finish()
        guard var detail else { throw CLIError("the coordinator sent no job \(job)") }
        detail.steps = steps
        detail.stepsMore = nil
        return ["generated": .string(Self.now), "job": detail.json, "workers": .array(workers.map(\.json))]
    }

    /// A `cairn train` run directory in the same shapes: its job file, metrics.jsonl and adapter.
    static func runDirectory(_ dir: String) throws -> JSONObject {
        let file = { (name: String) in (dir as NSString).appendingPathComponent(name) }
        var config = TrainingConfig()
        do { try config.apply(yamlFile: file("job.yaml")) } catch {
            throw CLIError("\(dir) is not a run directory of `cairn train` (\(error.description))")
        }
        var steps: [StepStatus] = []
        var evals: [EvalStatus] = []
        let text = (try? String(contentsOfFile: file("metrics.jsonl"), encoding: .utf8)) ?? ""
        for (n, line) in text.split(separator: "\n").enumerated() {
            guard let o = try? JSONValue.parse(Array(line.utf8)).objectValue, let step = o["step"]?.intValue else {
                throw CLIError("\(file("metrics.jsonl")):\(n + 1): not a metrics line")
            }
            if let loss = o["loss"]?.doubleValue {
                let tokens = o["trained_tokens"]?.intValue ?? 0
                let seconds = o["seconds"]?.doubleValue ?? 0
                steps.append(
                    StepStatus(
                        step: step, loss: loss, tokens: tokens, seconds: seconds,
                        workers: ["local": StepStatus.Work(tokens: tokens, seconds: seconds)]))
            } else if let loss = o["eval_loss"]?.doubleValue {
                evals.append(EvalStatus(step: step, loss: loss, tokens: o["eval_tokens"]?.intValue ?? 0))
            }
        }
        let done = steps.last?.step ?? 0
        let total = config.steps > 0 ? config.steps : done
        var detail = JobStatus(
            id: (dir as NSString).lastPathComponent, state: done >= total ? "done" : "stopped", mode: "one machine",
            step: done, totalSteps: total, data: (config.data as NSString).lastPathComponent)
        detail.steps = steps
        detail.evals = evals
        detail.settings = config.settings()
        detail.workerNames = ["local": ProcessInfo.processInfo.hostName]
        detail.loss = steps.last?.loss
        detail.evalLoss = evals.last?.loss
        let recent = steps.suffix(5)
        let seconds = recent.reduce(0) { $0 + $1.seconds }
        if seconds > 0 { detail.tokensPerSecond = Double(recent.reduce(0) { $0 + $1.tokens }) / seconds }
        let provenance =
            AdapterProvenance.recorded(inPEFTFile: file("adapter_model.safetensors")) ?? AdapterProvenance()
        var lineage = provenance.lineageNode(name: (dir as NSString).lastPathComponent, hash: provenance.adapterHash)
        lineage["base_model"] = .string(config.model)
        lineage["data"] = .string(detail.data)
        detail.lineage = lineage
        return ["generated": .string(now), "job": detail.json]
    }
}
