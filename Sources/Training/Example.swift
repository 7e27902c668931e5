// Example: a record turned into tokens, with which tokens the model is trained to predict.

import Tokenizer

/// A tokenized record.
public struct Example: Sendable, Equatable {
    /// Token ids.
    public var tokens: [Int32]
    /// Whether the prediction of each token is trained (the loss mask, aligned with `tokens`).
    public var trained: [Bool]

    /// An example; the arrays must have equal length.
    public init(tokens: [Int32], trained: [Bool]) {
        precondition(tokens.count == trained.count, "Example: \(tokens.count) tokens, \(trained.count) mask entries")
        self.tokens = tokens
        self.trained = trained
    }

    /// Tokens whose prediction is trained (the first token is never predicted).
    public var trainedCount: Int { trained.dropFirst().reduce(0) { $0 + ($1 ? 1 : 0) } }
}

/// Turns records into examples with a model's tokenizer and chat template.
public struct ExampleBuilder: Sendable {
    /// The tokenizer.
    public let tokenizer: BPETokenizer
    /// The chat template, needed for chat records.
    public let template: ChatTemplate?
    /// Loss on everything, or on completions and assistant turns.
    public let lossOn: LossOn

    /// A builder.
    public init(tokenizer: BPETokenizer, template: ChatTemplate?, lossOn: LossOn) {
        self.tokenizer = tokenizer
        self.template = template
        self.lossOn = lossOn
    }

    /// The example of a record. Text and completions end with the end-of-sequence token so the model learns
    /// to stop; a chat's assistant turns end with the template's end-of-turn token.
    ///
    /// - Throws: `ChatTemplateError` for chat records when there is no usable template.
    public func example(_ record: Record) throws(ChatTemplateError) -> Example {
        var tokens: [Int32] = []
        var trained: [Bool] = []
        func add(_ ids: [Int32], _ train: Bool) {
            tokens += ids
            trained += [Bool](repeating: train || lossOn == .all, count: ids.count)
        }
        if tokenizer.addsBOS, let bos = tokenizer.bosId, !isChat(record) { add([bos], false) }
        switch record {
        case .text(let text):
            add(tokenizer.encode(text, parseSpecial: false), true)
            if let eos = tokenizer.eosId { add([eos], true) }
        case .promptCompletion(let prompt, let completion):
            add(tokenizer.encode(prompt, parseSpecial: false), false)
            add(tokenizer.encode(completion, parseSpecial: false), true)
            if let eos = tokenizer.eosId { add([eos], true) }
        case .chat(let messages):
            guard let template else { throw .unrecognised("missing (the model ships no chat template)") }
            let bos = tokenizer.bosId.map { tokenizer.tokens[Int($0)] } ?? ""
            let eos = tokenizer.eosId.map { tokenizer.tokens[Int($0)] } ?? ""
            let endOfTurn = tokenizer.endOfGenerationIds.sorted().map { tokenizer.tokens[Int($0)] }
            for segment in try template.segments(
                messages, addGenerationPrompt: false, bosText: bos, eosText: eos, endOfTurn: endOfTurn)
            {
                add(tokenizer.encode(segment.text, parseSpecial: !segment.isContent), segment.isTrained)
            }
        }
        return Example(tokens: tokens, trained: trained)
    }

    private func isChat(_ record: Record) -> Bool {
        if case .chat = record { return true }
        return false
    }
}
