// cairn generate: chat with a model or continue a prompt, streaming tokens as they come.

import ArgumentParser
import Llama
import ModelFormats
import Tokenizer

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate text from a prompt, streaming it as it comes.",
        discussion: """
            A chat model gets its chat template applied: the prompt becomes a user message (after --system, \
            if given) and the model answers as the assistant. --raw sends the prompt as is. Decoding is greedy \
            unless --temperature is above 0; it stops at the model's end token or after --max-tokens.

            Examples:
              cairn generate --prompt "What is the capital of France?"
              cairn generate --adapter runs/capitals --prompt "What is the capital of Peru?"
            """)

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var adapterOptions: AdapterOptions

    @Option(name: .shortAndLong, help: "The prompt: the user's message, or the raw text with --raw.")
    var prompt: String

    @Option(help: "A system message to put before the prompt (chat models).")
    var system: String?

    @Flag(help: "Send the prompt as is, without the chat template.")
    var raw = false

    @Option(help: "Use this chat template instead of the model's: \(ChatTemplate.names.joined(separator: ", ")).")
    var chatTemplate: String?

    @Option(help: "The most tokens to generate.")
    var maxTokens = 256

    @Option(help: "Sampling temperature; 0 is greedy.")
    var temperature: Float = 0

    @Option(help: "Sample from the k most likely tokens only (0: all).")
    var topK = 0

    @Option(help: "Sample from the smallest set of tokens whose probability reaches p.")
    var topP: Float = 1

    @Option(help: "Seed of the sampling.")
    var seed: UInt64 = 0

    @Flag(help: "Print one JSON object with the text, token ids and timings instead of streaming.")
    var json = false

    func validate() throws {
        guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive") }
        guard temperature >= 0, temperature.isFinite else { throw ValidationError("--temperature must be 0 or more") }
        guard topK >= 0 else { throw ValidationError("--top-k must be 0 or more") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
        if raw, system != nil { throw ValidationError("--system needs the chat template; drop --raw") }
        if let chatTemplate, ChatTemplate(name: chatTemplate) == nil {
            throw ValidationError(
                "unknown --chat-template \"\(chatTemplate)\"; use one of \(ChatTemplate.names.joined(separator: ", "))")
        }
    }

    func run() throws {
        let lm = try modelOptions.load(adapters: adapterOptions.adapters)
        let tokenizer: BPETokenizer
        do { tokenizer = try lm.requireTokenizer() } catch { throw CLIError(error.description) }
        let promptIds: [Int32]
        if raw {
            promptIds = tokenizer.encode(prompt, parseSpecial: true, addSpecialTokens: true)
        } else {
            var messages: [ChatMessage] = []
            if let system { messages.append(ChatMessage(role: "system", content: system)) }
            messages.append(ChatMessage(role: "user", content: prompt))
            let text: String
            do {
                let template = try lm.chatTemplate(override: chatTemplate)
                text = try template.render(
                    messages, addGenerationPrompt: true,
                    bosText: tokenizer.bosId.map { tokenizer.tokens[Int($0)] } ?? "",
                    eosText: tokenizer.eosId.map { tokenizer.tokens[Int($0)] } ?? "")
            } catch {
                throw CLIError(error.description)
            }
            promptIds = tokenizer.encode(text, parseSpecial: true, addSpecialTokens: false)
        }
        guard !promptIds.isEmpty else { throw CLIError("the prompt is empty after tokenization") }
        guard promptIds.count < lm.model.maxPositions else {
            throw CLIError(
                "the prompt is \(promptIds.count) tokens; the model's context is \(lm.model.maxPositions)")
        }
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        var text = ""
        let sampling = SamplingSettings(temperature: temperature, topK: topK, topP: topP, seed: seed)
        let result = lm.model.generate(
            prompt: promptIds, maxTokens: maxTokens, stopIds: tokenizer.endOfGenerationIds, sampling: sampling
        ) { token in
            let piece = decoder.push(token)
            text += piece
            if !json { Terminal.write(piece) }
            return true
        }
        let rest = decoder.finish()
        text += rest
        if json {
            Terminal.printJSON([
                "text": .string(text), "tokens": .array(result.tokens.map { .integer(Int64($0)) }),
                "stop_reason": .string(result.stopReason.rawValue),
                "prompt_tokens": .integer(Int64(result.promptTokens)),
                "prompt_seconds": .number(result.promptSeconds),
                "generation_seconds": .number(result.generationSeconds),
            ])
        } else {
            Terminal.write(rest + "\n")
            let rate = result.generationSeconds > 0 ? Double(result.tokens.count) / result.generationSeconds : 0
            if Terminal.stderrIsTTY {
                Terminal.note(
                    "[\(result.promptTokens) prompt tokens, \(result.tokens.count) generated at \(String(format: "%.1f", rate)) tokens/s, stop: \(result.stopReason.rawValue)]"
                )
            }
        }
    }
}
