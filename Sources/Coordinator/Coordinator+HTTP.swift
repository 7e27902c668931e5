// Coordinator+HTTP: the dashboard page, the JSON API and /metrics. The HTTP server runs on a thread of its own;
// requests for data wait in a mailbox that the coordinator's loop empties between messages (every 20 ms at
// most), so every answer is built on the coordinator's thread from its own state, exactly as a `status` reply is.
// Read-only: nothing here changes a job. Bound beyond loopback, every data route asks for the bearer token kept in
// STATE/http-token; the page itself holds no data and is served to anyone.
//
//   GET /                  the dashboard (polls the API below every 2 s)
//   GET /api/status        jobs, workers and health: `cairn status --json`
//   GET /api/workers       `cairn workers --json`
//   GET /api/jobs/ID       one job with its steps (?after=N: the steps after N), evaluations, settings, lineage
//   GET /metrics           Prometheus text format

import Dashboard
import Foundation
import HTTP
import Wire
import Logging
import ModelFormats

/// HTTP requests waiting for the coordinator's thread.
final class HTTPMailbox: @unchecked Sendable {
    final class Letter: @unchecked Sendable {
        let request: HTTPRequest
        var response: HTTPResponse?
        let answered = DispatchSemaphore(value: 0)
        init(_ request: HTTPRequest) { self.request = request }
    }

    private let lock = NSLock()
    private var letters: [Letter] = []
    private var closed = false

    /// Waits (on the HTTP thread) for the coordinator to answer; nil after `timeout` seconds or once closed.
    func ask(_ request: HTTPRequest, timeout: Double) -> HTTPResponse? {
        let letter = Letter(request)
        let accepted = lock.withLock { () -> Bool in
            guard !closed else { return false }
            letters.append(letter)
            return true
        }
        guard accepted else { return nil }
        guard letter.answered.wait(timeout: .now() + timeout) == .success else { return nil }
        return letter.response
    }

    /// The letters waiting now (on the coordinator's thread).
    func take() -> [Letter] {
        lock.withLock {
            let waiting = letters
            letters = []
            return waiting
        }
    }

    /// Answers nothing more; whoever waits is let go.
    func close() {
        let waiting = lock.withLock {
            closed = true
            return letters
        }
        for letter in waiting { letter.answered.signal() }
    }
}

extension StateFiles {
    /// The bearer token of the dashboard and API when they are served beyond loopback (0600).
    public static func httpToken(_ dir: String) -> String { (dir as NSString).appendingPathComponent("http-token") }

    /// The state directory's HTTP token, created the first time.
    static func loadOrCreateHTTPToken(_ dir: String) throws(CoordinatorError) -> String {
        let path = httpToken(dir)
        if let data = FileManager.default.contents(atPath: path) {
            let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            if token.count >= 32 { return token }
        }
        var random = SystemRandomNumberGenerator()
        let token = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &random)) }.joined()
        do { try writeFileAtomically(path, Array((token + "\n").utf8), mode: 0o600) } catch {
            throw CoordinatorError("cannot write the dashboard's token to \(path): \(error)")
        }
        return token
    }
}

extension Coordinator {
    /// Binds `options.http`: a failure is an error when `httpRequired`, a logged note otherwise.
    func startHTTP() throws(CoordinatorError) {
        guard let address = options.http else { return }
        let server: HTTPServer
        let mailbox = self.mailbox
        let tokenBox = TokenBox()
        do {
            server = try HTTPServer(address: address) { request in
                Self.route(request, token: tokenBox.token, mailbox: mailbox)
            }
        } catch {
            let message = "dashboard: \(error.message)"
            if options.httpRequired { throw CoordinatorError(message) }
            log(.warning, message + "; serving without a dashboard")
            return
        }
        if !server.isLoopback { tokenBox.token = try StateFiles.loadOrCreateHTTPToken(options.stateDirectory) }
        httpServer = server
        dashboardAddress = server.address
        log(
            "dashboard on http://\(server.address)/"
                + (server.isLoopback
                    ? " (this machine only)"
                    : " with a bearer token: open http://HOST:\(server.port)/#token=TOKEN, TOKEN from "
                        + StateFiles.httpToken(options.stateDirectory)))
    }

    /// Set once before the server starts, read by its thread afterwards.
    final class TokenBox: @unchecked Sendable {
        var token: String?
    }

    /// On the HTTP thread: the page, or the coordinator's answer to a data request.
    static func route(_ request: HTTPRequest, token: String?, mailbox: HTTPMailbox) -> HTTPResponse {
        if request.path == "/" || request.path == "/index.html" { return .html(DashboardPage.live) }
        if let token {
            guard let given = request.bearerToken, constantTimeEqual(given, token) else {
                var r = HTTPResponse.error(
                    401,
                    "this coordinator's API needs its bearer token (Authorization: Bearer TOKEN; the token is in "
                        + "the state directory's http-token)")
                r.headers.append(("WWW-Authenticate", "Bearer realm=\"cairn\""))
                return r
            }
        }
        return mailbox.ask(request, timeout: 10)
            ?? .error(503, "the coordinator did not answer within 10 s (busy, or stopping); try again")
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        guard x.count == y.count else { return false }
        return zip(x, y).reduce(0) { $0 | ($1.0 ^ $1.1) } == 0
    }

    /// Answers what the HTTP thread has waiting (on the coordinator's thread).
    func answerHTTPRequests() {
        for letter in mailbox.take() {
            letter.response = answer(letter.request)
            letter.answered.signal()
        }
    }

    func answer(_ request: HTTPRequest) -> HTTPResponse {
        let path =
            request.path.hasSuffix("/") && request.path.count > 1 ? String(request.path.dropLast()) : request.path
        switch path {
        case "/api/status": return .json(statusBody().json.serialized())
        case "/api/workers": return .json(JSONValue.array(workerStatuses().map { $0.json }).serialized())
        case "/metrics": return .body(Array(metricsText().utf8), type: MetricsText.contentType)
        case "/api/adapters":
            let request = AdapterListRequest(base: request.query["base"], name: request.query["name"])
            do {
                let (entries, omitted) = try registry.list(request, lineage: true, bytes: 8 << 20)
                var o: JSONObject = ["adapters": .array(entries.map(\.json))]
                if omitted > 0 { o["omitted"] = .integer(Int64(omitted)) }
                return .json(JSONValue.object(o).serialized())
            } catch { return .error(500, error.message) }
        default: break
        }
        if path.hasPrefix("/api/jobs/") {
            let id = String(path.dropFirst("/api/jobs/".count))
            var after: Int?
            if let text = request.query["after"] {
                guard let n = Int(text), n >= 0 else { return .error(400, "after must be a step number (0 or more)") }
                after = n
            }
            guard let detail = jobDetail(id, after: after, limit: Self.maxStepsInHTTP) else {
                return .error(404, "no job \(id)")
            }
            return .json(detail.json.serialized())
        }
        return .error(
            404, "nothing at \(request.path); try /, /api/status, /api/workers, /api/jobs/ID, /api/adapters or /metrics"
        )
    }

    /// The Prometheus exposition: durable facts from the store, this process's counters, the workers now.
    func metricsText() -> String {
        var m = MetricsText()
        let records = (try? store.jobs()) ?? []
        let totals = (try? store.totals()) ?? [:]
        var byState: [String: Int] = Dictionary(uniqueKeysWithValues: JobRecord.State.allCases.map { ($0.rawValue, 0) })
        for r in records { byState[r.state.rawValue, default: 0] += 1 }
        m.family(
            "cairn_jobs", .gauge, help: "Jobs by state.",
            samples: byState.sorted { $0.key < $1.key }.map { ([("state", $0.key)], Double($0.value)) })
        let jobLabels: (JobRecord) -> MetricsText.Labels = { [("job", $0.id), ("mode", $0.mode)] }
        m.family(
            "cairn_job_steps_total", .counter, help: "Steps (sync) or rounds (diloco, federated) journaled, per job.",
            samples: records.map { (jobLabels($0), Double(totals[$0.id]?.steps ?? 0)) })
        m.family(
            "cairn_job_target_steps", .gauge, help: "Steps or rounds a job runs in all.",
            samples: records.map { (jobLabels($0), Double($0.totalSteps)) })
        m.family(
            "cairn_job_tokens_total", .counter, help: "Tokens trained on, per job.",
            samples: records.map { (jobLabels($0), Double(totals[$0.id]?.tokens ?? 0)) })
        m.family(
            "cairn_job_running", .gauge, help: "1 for each job running now.",
            samples: records.map { (jobLabels($0), $0.state == .running ? 1 : 0) })
        var losses: [(MetricsText.Labels, Double)] = []
        var evalLosses: [(MetricsText.Labels, Double)] = []
        for r in records {
            if let s = try? store.steps(job: r.id, last: 1).last { losses.append((jobLabels(r), s.loss)) }
            if let e = try? store.lastEval(job: r.id) { evalLosses.append((jobLabels(r), e.loss)) }
        }
        m.family(
            "cairn_job_loss", .gauge, help: "Training loss of a job's last step (mean per trained token).",
            samples: losses)
        m.family(
            "cairn_job_eval_loss", .gauge, help: "Held-out loss of a job's last evaluation.", samples: evalLosses)
        m.histogram(
            "cairn_step_duration_seconds", help: "Wall time of the steps and rounds this coordinator journaled.",
            upperBounds: CoordinatorMetrics.stepBuckets,
            series: metrics.stepSeconds.sorted { $0.key < $1.key }.map {
                ([("mode", $0.key)], $0.value.counts, $0.value.sum)
            })
        var wire: [(labels: MetricsText.Labels, value: Double)] = []
        for (mode, t) in metrics.wire.sorted(by: { $0.key < $1.key }) {
            wire.append(([("mode", mode), ("direction", "sent")], Double(t.sent)))
            wire.append(([("mode", mode), ("direction", "received")], Double(t.received)))
        }
        m.family(
            "cairn_wire_bytes_total", .counter,
            help: "Bytes of training traffic (assignments down, results up), per distribution mode and direction.",
            samples: wire)
        m.single(
            "cairn_blob_bytes_sent_total", .counter, help: "Bytes of blob chunks served (models, adapters).",
            value: Double(metrics.blobBytesSent))

        let workers = workerViews()
        var states: [String: Int] = ["computing": 0, "ready": 0, "loading": 0, "idle": 0, "failed": 0]
        for w in workers where w.connected { states[w.state, default: 0] += 1 }
        m.single(
            "cairn_workers_alive", .gauge, help: "Workers connected now.",
            value: Double(workers.filter(\.connected).count))
        m.family(
            "cairn_workers", .gauge, help: "Connected workers by state.",
            samples: states.sorted { $0.key < $1.key }.map { ([("state", $0.key)], Double($0.value)) })
        let named: (WorkerView) -> MetricsText.Labels = { [("worker", $0.record.name), ("id", $0.record.id)] }
        var traffic: [(labels: MetricsText.Labels, value: Double)] = []
        for w in workers {
            traffic.append((named(w) + [("direction", "sent")], Double(w.traffic.sent)))
            traffic.append((named(w) + [("direction", "received")], Double(w.traffic.received)))
        }
        m.family(
            "cairn_worker_bytes_total", .counter, help: "Bytes to and from each worker since this coordinator started.",
            samples: traffic)
        m.family(
            "cairn_worker_rows_per_second", .gauge, help: "Each worker's measured speed (rows per second).",
            samples: workers.compactMap { w in w.info?.rowsPerSecond.map { (named(w), $0) } })
        let transfers = workers.compactMap { w in w.transfer.map { (labels: named(w) + [("blob", $0.blob)], $0) } }
        m.family(
            "cairn_blob_transfer_bytes", .gauge, help: "Bytes of a blob a worker has fetched so far.",
            samples: transfers.map { ($0.labels, Double($0.1.received)) })
        m.family(
            "cairn_blob_transfer_size_bytes", .gauge, help: "Size of the blob a worker is fetching.",
            samples: transfers.map { ($0.labels, Double($0.1.total)) })
        m.single(
            "cairn_workers_declared_silent_total", .counter,
            help: "Workers dropped for heartbeat silence since this coordinator started.",
            value: Double(core.workersDeclaredSilent))
        return m.text
    }
}
