// MetricsText: the Prometheus text exposition format (version 0.0.4), written by hand: a family is a `# HELP` and a
// `# TYPE` line followed by its samples; label values escape backslash, double quote and newline; histograms
// have cumulative `_bucket` samples ending with `le="+Inf"`, then `_sum` and `_count`. The coordinator keeps its
// own counters and renders them here on each scrape, so there is no registry to keep in step with its state.
// Reference: https://prometheus.io/docs/instrumenting/exposition_formats/

/// A Prometheus text exposition under construction.
public struct MetricsText: Sendable {
    public enum Kind: String, Sendable { case counter, gauge, histogram }

    /// Labels of one sample, in order.
    public typealias Labels = [(name: String, value: String)]

    public private(set) var text = ""
    private var families: Set<String> = []

    public init() {}

    /// The media type to serve it with.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// Adds a counter or gauge family with its samples (a family with no samples still declares itself).
    public mutating func family(_ name: String, _ kind: Kind, help: String, samples: [(labels: Labels, value: Double)])
    {
        declare(name, kind, help: help)
        for s in samples { sample(name, s.labels, s.value) }
    }

    /// Adds one unlabelled counter or gauge.
    public mutating func single(_ name: String, _ kind: Kind, help: String, value: Double) {
        family(name, kind, help: help, samples: [([], value)])
    }

    /// Adds a histogram family: for each label set, the counts per bucket (not cumulative; one more than the
    /// upper bounds, the last for +Inf), and the sum of the observations.
    public mutating func histogram(
        _ name: String, help: String, upperBounds: [Double], series: [(labels: Labels, counts: [Int], sum: Double)]
    ) {
        declare(name, .histogram, help: help)
        for s in series {
            precondition(s.counts.count == upperBounds.count + 1, "one count per bucket, and one for +Inf")
            var cumulative = 0
            for (i, count) in s.counts.enumerated() {
                cumulative += count
                let le = i < upperBounds.count ? Self.number(upperBounds[i]) : "+Inf"
                sample(name + "_bucket", s.labels + [("le", le)], Double(cumulative))
            }
            sample(name + "_sum", s.labels, s.sum)
            sample(name + "_count", s.labels, Double(cumulative))
        }
    }

    private mutating func declare(_ name: String, _ kind: Kind, help: String) {
        precondition(Self.isValidName(name), "metric name \(name)")
        precondition(families.insert(name).inserted, "metric family \(name) declared twice")
        let escapedHelp = help.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n")
        text += "# HELP \(name) \(escapedHelp)\n# TYPE \(name) \(kind.rawValue)\n"
    }

    private mutating func sample(_ name: String, _ labels: Labels, _ value: Double) {
        text += name
        if !labels.isEmpty {
            text += "{"
            text += labels.map { "\($0.name)=\"\(Self.escape($0.value))\"" }.joined(separator: ",")
            text += "}"
        }
        text += " \(Self.number(value))\n"
    }

    /// A label value with `\`, `"` and newlines escaped.
    static func escape(_ value: String) -> String {
        var out = ""
        for c in value.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// Go's float syntax as Prometheus reads it: integers without a fraction, NaN and ±Inf spelled out.
    static func number(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return "\(v)"
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, first.isASCII else { return false }
        let letter: (Unicode.Scalar) -> Bool = {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || $0 == "_" || $0 == ":"
        }
        return letter(first) && name.unicodeScalars.allSatisfy { letter($0) || ("0"..."9").contains($0) }
    }
}
