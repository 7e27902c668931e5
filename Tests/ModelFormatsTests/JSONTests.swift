import Testing
import ModelFormats

@Suite struct JSONTests {
    @Test func parsesEveryKindAndKeepsKeyOrderAndExactIntegers() throws {
        let v = try JSONValue.parse(
            #" {"b": [1, -2.5e3, true, null, "x\u00e9\ud83d\ude00\n"], "a": 9007199254740993, "c": {}} "#)
        let o = try #require(v.objectValue)
        #expect(o.keys == ["b", "a", "c"])
        #expect(o["a"] == .integer(9_007_199_254_740_993))
        #expect(o["b"]?.arrayValue == [.integer(1), .number(-2500), .bool(true), .null, .string("xé😀\n")])
        #expect(o["c"]?.objectValue?.count == 0)
    }

    @Test(arguments: [
        (#"{"a": 1, "a": 2}"#, "duplicate key"),
        (#"{"a": 1} x"#, "unexpected text"),
        (#"[1, 2"#, "end of input"),
        (#""\ud800""#, "unpaired surrogate"),
        (#""\q""#, "invalid escape"),
        (#"01"#, "leading zero"),
        (#"1e999"#, "out of range"),
        ("\"a\u{01}\"", "control character"),
        (#"{"a" 1}"#, "expected ':'"),
        (#"[1,]"#, "expected a value"),
    ])
    func rejectsMalformedInputWithAPosition(text: String, expected: String) {
        #expect {
            try JSONValue.parse(text)
        } throws: { error in
            guard let e = error as? JSONError else { return false }
            return e.message.contains(expected) && e.line == 1 && e.column >= 1
        }
    }

    /// U+2000 and U+2002 are canonically equivalent, so Swift's `==` calls them equal; as JSON keys (and
    /// vocabulary entries) they are different bytes and must stay two keys.
    @Test func canonicallyEquivalentKeysAreDistinct() throws {
        let o = try #require(try JSONValue.parse("{\"a\u{2000}\": 1, \"a\u{2002}\": 2}").objectValue)
        #expect(o.count == 2)
        #expect(o["a\u{2000}"] == .integer(1) && o["a\u{2002}"] == .integer(2))
    }

    @Test func reportsTheLineOfAnErrorAndBoundsNesting() {
        #expect(throws: JSONError.self) {
            try JSONValue.parse(String(repeating: "[", count: 200) + String(repeating: "]", count: 200))
        }
        do {
            _ = try JSONValue.parse("{\n  \"a\": 1,\n  \"b\": tru\n}")
            Issue.record("expected an error")
        } catch {
            #expect(error.line == 3)
        }
    }

    @Test func serializationRoundTripsAndSortsKeysLikePython() throws {
        let value: JSONValue = ["z": [1, 2.5, "é\"\\\n\u{1}"], "a": ["nested": true, "none": nil], "m": 1e-5]
        for pretty in [false, true] {
            #expect(try JSONValue.parse(value.serialized(pretty: pretty)) == value)
        }
        #expect(value.serialized(sortedKeys: true).hasPrefix(#"{"a":{"nested":true,"none":null},"m":"#))
        #expect(JSONValue.array([]).serialized(pretty: true) == "[]")
        #expect(JSONValue.number(16).serialized() == "16.0")
    }
}
