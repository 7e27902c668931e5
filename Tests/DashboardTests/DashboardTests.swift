// Dashboard: the Prometheus text writer (escaping, numbers, histogram arithmetic) and the report page (data that
// cannot break out of its script element, nothing loaded from elsewhere).

import Dashboard
import Foundation
import ModelFormats
import Testing

@Suite struct MetricsTextTests {
    @Test func writesFamiliesWithEscapedLabels() {
        var m = MetricsText()
        m.family(
            "cairn_job_step", .gauge, help: "Steps journaled.\nPer job.",
            samples: [([("job", "job-1"), ("mode", "sync")], 12), ([("job", "a\"b\\c\nd")], 0.25)])
        m.single("cairn_up", .gauge, help: "Always 1.", value: 1)
        #expect(
            m.text == """
                # HELP cairn_job_step Steps journaled.\\nPer job.
                # TYPE cairn_job_step gauge
                cairn_job_step{job="job-1",mode="sync"} 12
                cairn_job_step{job="a\\"b\\\\c\\nd"} 0.25
                # HELP cairn_up Always 1.
                # TYPE cairn_up gauge
                cairn_up 1

                """)
    }

    @Test func histogramsAreCumulative() {
        var m = MetricsText()
        m.histogram(
            "cairn_step_seconds", help: "Step time.", upperBounds: [0.5, 1, 2.5],
            series: [([("mode", "sync")], [2, 0, 3, 1], 9.75)])
        let lines = m.text.split(separator: "\n").map(String.init)
        #expect(
            lines.suffix(6) == [
                "cairn_step_seconds_bucket{mode=\"sync\",le=\"0.5\"} 2",
                "cairn_step_seconds_bucket{mode=\"sync\",le=\"1\"} 2",
                "cairn_step_seconds_bucket{mode=\"sync\",le=\"2.5\"} 5",
                "cairn_step_seconds_bucket{mode=\"sync\",le=\"+Inf\"} 6",
                "cairn_step_seconds_sum{mode=\"sync\"} 9.75",
                "cairn_step_seconds_count{mode=\"sync\"} 6",
            ])
    }

    @Test func spellsSpecialNumbersAsPrometheusReadsThem() {
        var m = MetricsText()
        m.family(
            "x", .gauge, help: "h",
            samples: [([("k", "nan")], .nan), ([("k", "inf")], .infinity), ([("k", "big")], 1e20), ([("k", "n")], -3)])
        #expect(m.text.contains("x{k=\"nan\"} NaN\n") && m.text.contains("x{k=\"inf\"} +Inf\n"))
        #expect(m.text.contains("x{k=\"big\"} 1e+20\n") && m.text.contains("x{k=\"n\"} -3\n"))
    }
}

@Suite struct DashboardPageTests {
    @Test func theLivePageLoadsNothingFromElsewhere() {
        let page = DashboardPage.live
        #expect(page.hasPrefix("<!doctype html>") && page.contains("data-mode=\"live\""))
        for external in ["src=\"http", "href=\"http", "@import", "url(http", "<link "] {
            #expect(!page.contains(external), "the page refers to something elsewhere: \(external)")
        }
    }

    /// Data that holds "</script>" (a job named by a user, say) stays data: the embedded JSON has no "<" left and
    /// parses back to the same value.
    @Test func reportDataCannotEndItsScript() throws {
        let hostile: JSONValue = [
            "job": ["id": "</script><script>alert(1)</script>", "steps": []], "generated": "now",
        ]
        let page = DashboardPage.report(data: hostile)
        #expect(page.contains("data-mode=\"report\"") && !page.contains("data-mode=\"live\""))
        let open = "<script id=\"cairn-data\" type=\"application/json\">"
        let start = try #require(page.range(of: open)).upperBound
        let end = try #require(page.range(of: "</script>", range: start..<page.endIndex)).lowerBound
        let embedded = String(page[start..<end])
        #expect(!embedded.contains("<"))
        #expect(try JSONValue.parse(Array(embedded.utf8)) == hostile)
    }
}
