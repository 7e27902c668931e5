// The coordinator's web side, as users meet it: the dashboard of a running job opened in headless Chromium (its
// DOM checked, a screenshot kept), /metrics read by Prometheus' own text parser (python3-prometheus-client), the
// report of `cairn report` opened in the same browser, and the bearer token beyond loopback. Enabled by
// CAIRN_WEB_TESTS=1 (Scripts/test), which also installs the browser and the parser.

import Foundation
import ModelFormats
import TestSupport
import Testing

extension ClusterHarness {
    /// The dashboard's port, as the coordinator reports it in status.
    func dashboardPort() -> Int? {
        guard let r = try? cairn("status", "--json"), r.status == 0,
            let address = (try? JSONValue.parse(r.stdout))?.objectValue?["coordinator"]?.objectValue?["dashboard"]?
                .stringValue,
            let colon = address.lastIndex(of: ":")
        else { return nil }
        return Int(address[address.index(after: colon)...])
    }

    /// The ids of the connected workers, by name.
    func workerIds() -> [String: String] {
        Dictionary(
            connectedWorkers().compactMap { w in
                w["name"]?.stringValue.flatMap { n in w["id"]?.stringValue.map { (n, $0) } }
            },
            uniquingKeysWith: { a, _ in a })
    }

    /// A job of the tiny model long enough to be running whenever a test looks, evaluated every `evalEvery` steps.
    func writeLongJob(evalEvery: Int) throws -> String {
        let held = try writeHeldOut(lines: ["the mat sat on the cat", "three two one", "green blue red"])
        return try writeJob(steps: 100_000, extra: "validation_data: \(held)\neval_every: \(evalEvery)")
    }
}

@Suite(
    .serialized, .enabled(if: Browser.enabled, "set CAIRN_WEB_TESTS=1 (Scripts/test does, after installing Chromium)"))
struct WebTests {
    /// A running job on two workers: the dashboard in headless Chromium shows the job, both workers, and a loss
    /// curve with one point per journaled step (and the held-out points), drawn by the page itself.
    @Test func theDashboardShowsTheRunningJobItsWorkersAndItsLossCurve() throws {
        let browser = try #require(Browser.find(), "chromium is installed (Scripts/setup --test)")
        let c = ClusterHarness("web-dashboard")
        try c.startCluster(workers: ["w1", "w2"])
        let id = try c.submit(try c.writeLongJob(evalEvery: 4))
        #expect(
            c.waitUntil(120) {
                let s = c.status(id)
                return (s?["step"]?.intValue ?? 0) >= 12 && (s?["evals"]?.arrayValue?.count ?? 0) >= 2
            }, "\(c.logs)")
        let port = try #require(c.dashboardPort(), "the coordinator serves a dashboard: \(c.logs)")
        let before = c.status(id)?["step"]?.intValue ?? 0
        let url = "http://127.0.0.1:\(port)/"
        let dom = try browser.dom(url)
        let after = c.status(id)
        #expect(after?["state"] == "running", "the job was running throughout")
        let journaled = after?["step"]?.intValue ?? 0

        // The job: a row in the jobs table and a panel of its own.
        #expect(!HTMLTag.all("tr", in: dom, matching: ["data-job": id]).isEmpty, "the jobs table lists \(id)")
        let panel = HTMLTag.all("section", in: dom, matching: ["data-job": id]).first
        #expect(panel?.attributes["data-state"] == "running")
        // Its workers, by id, named.
        let ids = c.workerIds()
        #expect(ids.count == 2)
        for (name, workerId) in ids {
            #expect(
                !HTMLTag.all("tr", in: dom, matching: ["data-worker": workerId]).isEmpty, "worker \(name) is listed")
            #expect(dom.contains(">\(name)<"), "worker \(name) is named")
        }
        // The loss curve: one point per step the page fetched, which were all the steps journaled at that time.
        let chart = try #require(
            HTMLTag.all("svg", in: dom, matching: ["data-job": id]).first { $0.attributes["class"] == "loss-chart" })
        let shown = Int(chart.attributes["data-steps"] ?? "") ?? -1
        #expect(
            shown >= before && shown <= journaled, "the page drew \(shown) steps; \(before)…\(journaled) were journaled"
        )
        let train = try #require(HTMLTag.all("path", in: dom, matching: ["data-series": "train"]).first)
        #expect(train.attributes["data-points"] == "\(shown)" && train.pathPoints == shown, "one point per step")
        let evals = Int(chart.attributes["data-evals"] ?? "") ?? -1
        let eval = try #require(HTMLTag.all("path", in: dom, matching: ["data-series": "eval"]).first)
        // Every 4 steps; the evaluation after the last step shown may still have been running.
        let expected = shown % 4 == 0 ? [shown / 4 - 1, shown / 4] : [shown / 4]
        #expect(
            expected.contains(evals) && eval.pathPoints == evals, "held-out points every 4 steps: \(evals) of \(shown)")
        #expect(HTMLTag.all("circle", in: dom).count >= evals)
        // Throughput: one line per worker.
        let throughput = HTMLTag.all("svg", in: dom, matching: ["data-job": id]).first {
            $0.attributes["class"] == "throughput-chart"
        }
        #expect(throughput?.attributes["data-workers"] == "2")

        let png = Browser.outputDirectory.appendingPathComponent("dashboard.png")
        try browser.screenshot(url, to: png)
        let bytes = try Data(contentsOf: png)
        #expect(bytes.count > 10_000 && bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]), "a PNG at \(png.path)")
    }

    /// The registry on the dashboard: a row per published adapter, and the lineage tree of an adapter trained from
    /// another, naming its parent.
    @Test func theDashboardListsTheRegistryAndItsLineageTrees() throws {
        let browser = try #require(Browser.find(), "chromium is installed (Scripts/setup --test)")
        let c = ClusterHarness("web-registry")
        try c.startCluster(workers: ["w1"])
        let id = try c.submit(try c.writeJob(steps: 2))
        #expect(c.waitForJob(id)?["state"] == "done", "\(c.logs)")
        #expect(try c.cairn("publish", id, "--name", "first").status == 0)
        let next = try c.writeJob(
            data: "more", job: "next", lines: ["stones on stones", "the river runs", "hello world", "red green blue"],
            steps: 2, batch: 4, seqLen: 24, learningRate: 0.01, extra: "init_adapter: first")
        let id2 = try c.submit(next)
        #expect(c.waitForJob(id2)?["state"] == "done", "\(c.logs)")
        #expect(try c.cairn("publish", id2, "--name", "second").status == 0)
        let port = try #require(c.dashboardPort())
        let api = try httpGet(port: port, "/api/adapters")
        let body = String(decoding: api.body, as: UTF8.self)
        #expect(api.status == 200 && body.contains("\"first\"") && body.contains("\"lineage\""), "\(body)")
        let dom = try browser.dom("http://127.0.0.1:\(port)/")
        #expect(!HTMLTag.all("tr", in: dom, matching: ["data-adapter": "first@1"]).isEmpty, "first@1 is listed")
        #expect(!HTMLTag.all("tr", in: dom, matching: ["data-adapter": "second@1"]).isEmpty, "second@1 is listed")
        // second's tree: itself, then its parent first@1 beneath it.
        let tree = try #require(dom.range(of: "data-lineage=\"second@1\""), "second@1 has a lineage tree")
        let rest = dom[tree.upperBound...]
        let end = rest.range(of: "</ul></details>")?.lowerBound ?? rest.endIndex
        let shown = rest[..<end]
        #expect(shown.contains("second@1") && shown.contains("first@1"), "\(shown.prefix(2000))")
        #expect(HTMLTag.all("ul", in: dom, matching: ["data-lineage": "first@1"]).isEmpty, "first@1 has no parents")
    }

    /// /metrics, parsed by the Prometheus client library's own parser, has the series the dashboard promises:
    /// steps, tokens, loss, the step-time histogram, bytes per mode, workers alive, blob transfer progress.
    @Test func metricsParseWithPrometheusOwnParserAndHaveTheSeries() throws {
        let c = ClusterHarness("web-metrics")
        try c.startCluster(workers: ["w1", "w2"])
        let id = try c.submit(try c.writeJob(steps: 8))
        #expect(c.waitForJob(id)?["state"] == "done", "\(c.logs)")
        let port = try #require(c.dashboardPort())
        let reply = try httpGet(port: port, "/metrics")
        #expect(reply.status == 200 && reply.headers["content-type"]?.hasPrefix("text/plain; version=0.0.4") == true)
        let parse = try runCommand(
            "/usr/bin/python3",
            [
                "-c",
                """
                import json, sys
                from prometheus_client.parser import text_string_to_metric_families
                out = {}
                for f in text_string_to_metric_families(sys.stdin.read()):
                    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
                print(json.dumps(out))
                """,
            ], input: reply.text, timeout: 60)
        #expect(parse.status == 0, "the parser refused it: \(parse.stderr)\n\(reply.text)")
        let families = try #require(try JSONValue.parse(parse.stdout).objectValue)
        func samples(_ family: String, _ name: String? = nil) -> [(labels: JSONObject, value: Double)] {
            (families[family]?.objectValue?["samples"]?.arrayValue ?? []).compactMap { s in
                guard let a = s.arrayValue, a.count == 3, name == nil || a[0].stringValue == name,
                    let labels = a[1].objectValue, let value = a[2].doubleValue
                else { return nil }
                return (labels, value)
            }
        }
        func type(_ family: String) -> String? { families[family]?.objectValue?["type"]?.stringValue }
        // The parser names counters without _total.
        #expect(type("cairn_job_steps") == "counter" && samples("cairn_job_steps").first?.value == 8)
        #expect(samples("cairn_job_steps").first?.labels["job"] == .string(id))
        let tokens = (c.status(id)?["steps"]?.arrayValue ?? []).compactMap { $0.objectValue?["tokens"]?.intValue }
        #expect(samples("cairn_job_tokens").first?.value == Double(tokens.reduce(0, +)))
        #expect(type("cairn_job_loss") == "gauge" && (samples("cairn_job_loss").first?.value ?? 0) > 0)
        #expect(type("cairn_step_duration_seconds") == "histogram")
        #expect(samples("cairn_step_duration_seconds", "cairn_step_duration_seconds_count").first?.value == 8)
        let buckets = samples("cairn_step_duration_seconds", "cairn_step_duration_seconds_bucket")
        #expect(buckets.last?.labels["le"] == "+Inf" && buckets.last?.value == 8)
        let wire = samples("cairn_wire_bytes")
        #expect(wire.contains { $0.labels["mode"] == "sync" && $0.labels["direction"] == "sent" && $0.value > 0 })
        #expect(wire.contains { $0.labels["mode"] == "sync" && $0.labels["direction"] == "received" && $0.value > 0 })
        #expect(samples("cairn_workers_alive").first?.value == 2)
        let fetched = samples("cairn_blob_transfer_bytes")
        let sizes = samples("cairn_blob_transfer_size_bytes")
        #expect(
            fetched.count == 2 && fetched.map(\.value) == sizes.map(\.value), "both workers fetched the whole model")
        #expect((samples("cairn_blob_bytes_sent").first?.value ?? 0) >= (sizes.first?.value ?? 1))
    }

    /// `cairn report` of a cluster job and of a `cairn train` run directory: one file each, which the browser
    /// opens offline and draws the same curves from.
    @Test func reportsOpenInTheBrowserAndShowTheCurves() throws {
        let browser = try #require(Browser.find(), "chromium is installed (Scripts/setup --test)")
        let c = ClusterHarness("web-report")
        try c.startCluster(workers: ["w1", "w2"])
        let held = try c.writeHeldOut(lines: ["the mat sat on the cat", "three two one"])
        let job = try c.writeJob(steps: 12, extra: "validation_data: \(held)\neval_every: 4")
        let id = try c.submit(job)
        #expect(c.waitForJob(id)?["state"] == "done", "\(c.logs)")
        let file = Browser.outputDirectory.appendingPathComponent("report.html")
        let made = try c.cairn("report", id, "-o", file.path)
        #expect(made.status == 0 && made.stderr.contains("12 steps, 3 evaluations"), "\(made.stderr)")
        let html = try String(contentsOf: file, encoding: .utf8)
        #expect(!html.contains("src=\"http") && !html.contains("href=\"http"), "self-contained")
        let dom = try browser.dom(file.absoluteString)
        let train = HTMLTag.all("path", in: dom, matching: ["data-series": "train"]).first
        #expect(train?.pathPoints == 12 && train?.attributes["data-points"] == "12")
        #expect(HTMLTag.all("path", in: dom, matching: ["data-series": "eval"]).first?.pathPoints == 3)
        let throughput = HTMLTag.all("svg", in: dom).first { $0.attributes["class"] == "throughput-chart" }
        #expect(throughput?.attributes["data-workers"] == "2", "a throughput line per worker")
        #expect(dom.contains("learning_rate") && dom.contains("validation_data"), "the settings")
        #expect(dom.contains("class=\"lineage\"") && dom.contains("sha256"), "the lineage with the adapter's id")
        try browser.screenshot(file.absoluteString, to: Browser.outputDirectory.appendingPathComponent("report.png"))

        // The single-machine run of the same job, from its run directory.
        _ = try c.reference(job)
        let runFile = Browser.outputDirectory.appendingPathComponent("report-run.html")
        let run = try runCommand(
            cairnExecutable, ["report", c.dir.appendingPathComponent("reference-run").path, "-o", runFile.path])
        #expect(run.status == 0, "\(run.stderr)")
        let runDOM = try browser.dom(runFile.absoluteString)
        #expect(HTMLTag.all("path", in: runDOM, matching: ["data-series": "train"]).first?.pathPoints == 12)
        #expect(HTMLTag.all("path", in: runDOM, matching: ["data-series": "eval"]).first?.pathPoints == 3)
    }
}

@Suite(.serialized) struct DashboardAccessTests {
    /// Beyond loopback the data routes need the bearer token from the state directory; the page itself (no data)
    /// does not. The JSON API has the shapes of `cairn status --json`.
    @Test func beyondLoopbackTheAPINeedsTheToken() throws {
        let c = ClusterHarness("web-token")
        c.http = "0.0.0.0:0"
        try c.startCoordinator()
        let port = try #require(c.dashboardPort())
        let token = try String(contentsOfFile: c.state + "/http-token", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.count == 64)
        let attributes = try FileManager.default.attributesOfItem(atPath: c.state + "/http-token")
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        #expect(try httpGet(port: port, "/").status == 200)
        let refused = try httpGet(port: port, "/api/status")
        #expect(refused.status == 401 && refused.headers["www-authenticate"]?.hasPrefix("Bearer") == true)
        #expect(refused.text.contains("http-token"), "says where the token is")
        #expect(try httpGet(port: port, "/metrics", headers: ["Authorization": "Bearer wrong"]).status == 401)
        let ok = try httpGet(port: port, "/api/status", headers: ["Authorization": "Bearer \(token)"])
        #expect(ok.status == 200)
        let api = try JSONValue.parse(ok.text).objectValue
        let cli = try JSONValue.parse(try c.cairn("status", "--json").stdout).objectValue
        #expect(api.map { Set($0.keys) } == cli.map { Set($0.keys) }, "the same shape as cairn status --json")
        #expect(try httpGet(port: port, "/api/jobs/job-9", headers: ["Authorization": "Bearer \(token)"]).status == 404)
        // On loopback (the default) no token is asked.
        c.killCoordinator()
        c.http = "127.0.0.1:0"
        try c.startCoordinator()
        let local = try #require(c.dashboardPort())
        #expect(try httpGet(port: local, "/api/workers").status == 200)
    }
}
