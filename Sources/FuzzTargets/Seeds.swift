// Seeds: one or a few valid inputs per target, built from the real writers, so mutation starts from inputs that
// get past the first checks. Scripts/fuzz writes them into Fuzz/corpus/<target>/ when that is empty.

import ModelFormats
import TensorKernels
import Wire

extension FuzzTarget {
    /// Valid inputs for this target, named.
    public var seeds: [(name: String, bytes: [UInt8])] {
        switch self {
        case .wire:
            let messages: [Message] = [
                Message(.hello, ["name": "w1", "cores": 2, "memory": 1_073_741_824, "gflops": 90.5, "threads": 2]),
                Message(.heartbeat),
                Message(
                    .assign, ["job": "job-1", "assignment": 3, "step": 7, "rows": 2],
                    tensors: [
                        Tensor(name: "parameters", floats: [0.5, -1, 2, 0]),
                        Tensor(name: "tokens", ints: [1, 2, 3, 4]),
                        Tensor(name: "targets", ints: [2, 3, 4, -100]), Tensor(name: "positions", ints: [0, 1, 0, 1]),
                        Tensor(name: "starts", ints: [0, 2]),
                    ]),
                Message(.error, ["code": "cache", "job": "job-1", "message": "disk full"]),
            ]
            return messages.map { ($0.type.name, Self.join($0.encode())) }
        case .json:
            return [
                ("object", Array(#"{"a": [1, 2.5e-3, -7, true, null], "b": {"c": "\u00e9\n"}}"#.utf8)),
                ("numbers", Array("[0, -0.0, 1e308, 123456789012345678901234567890]".utf8)),
            ]
        case .gguf:
            var w = GGUFWriter()
            w.set("general.architecture", .string("llama"))
            w.set("llama.block_count", .uint32(1))
            w.set("llama.embedding_length", .uint32(8))
            w.set("llama.feed_forward_length", .uint32(16))
            w.set("llama.attention.head_count", .uint32(2))
            w.set("llama.context_length", .uint32(32))
            w.set("tokenizer.ggml.model", .string("gpt2"))
            w.set("tokenizer.ggml.tokens", .array(.string, ["a", "b", "ab"].map { .string($0) }))
            w.set("tokenizer.ggml.merges", .array(.string, [.string("a b")]))
            w.addTensor(name: "token_embd.weight", ne: [8, 3], floats: (0..<24).map { Float($0) / 24 })
            w.addTensor(name: "output_norm.weight", ne: [8], floats: [Float](repeating: 1, count: 8))
            return [("tiny-llama", w.serialized())]
        case .safetensors:
            var w = SafetensorsWriter()
            w.metadata = ["format": "pt"]
            w.add("a.weight", shape: [2, 3], floats: [1, 2, 3, 4, 5, 6])
            w.add("b.bias", dtype: .BF16, shape: [2], bytes: [0x80, 0x3F, 0x00, 0x40])
            return [("two-tensors", w.serialized())]
        case .tokenizer:
            return [
                ("english", Array("the cat sat on the mat, then the dog ran in 2024.".utf8)),
                ("special", Array("<|im_start|>user\nhé 😀<|im_end|>\n".utf8)),
                ("bytes", [0xFF, 0xFE, 0x00, 0x41, 0xC3, 0x28]),
            ]
        case .job:
            return [
                (
                    "job",
                    Array(
                        """
                        model: smollm2-135m
                        data: train.jsonl
                        mode: diloco
                        rank: 8
                        alpha: 16
                        targets: [q_proj, v_proj]
                        steps: 100
                        learning_rate: 2e-4
                        inner_steps: 16
                        compression: int8

                        """.utf8)
                )
            ]
        case .http:
            return [
                ("api", Array("GET /api/jobs/job-1?after=12 HTTP/1.1\r\nHost: coord:7071\r\n\r\n".utf8)),
                (
                    "metrics",
                    Array(
                        "GET /metrics HTTP/1.1\r\nHost: coord\r\nAuthorization: Bearer 0a1b2c\r\nAccept: */*\r\n\r\n"
                            .utf8)
                ),
            ]
        case .template:
            return [
                (
                    "chatml",
                    Array(
                        ("{%- for message in messages %}{% if loop.first and message.role != 'system' %}{{ '<|im_start|>"
                            + "system\nYou are helpful.<|im_end|>\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + "
                            + "'\n' + message.content | trim + '<|im_end|>\n' }}{% endfor -%}\n{% if add_generation_prompt "
                            + "%}{{ '<|im_start|>assistant\n' }}{% endif %}").utf8)
                ),
                (
                    "namespace",
                    Array(
                        ("{% set ns = namespace(n=0, s='') %}{% for m in messages[::-1] if m.role is string %}{% set "
                            + "ns.n = ns.n + loop.index0 %}{% set ns.s = ns.s ~ m.content.split(' ')[0] %}{% endfor %}"
                            + "{{ ns.n }}{{ ns.s | tojson(indent=2) }}{{ raise_exception('x') if ns.n > 5 }}").utf8)
                ),
            ]
        case .pretokenizer:
            return [
                ("mixed", Array("Hello, y'all! How are you 😁 ?我想在apple工作1314151天～\n\n  \t x".utf8)),
                ("marks", Array("e\u{301}\u{301} Ünïcödé ١٢٣ Ⅷ — “quoted” \u{a0}\u{3000}end".utf8)),
            ]
        }
    }
}
