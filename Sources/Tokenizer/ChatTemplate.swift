// ChatTemplate: renders a conversation as the prompt text a chat model was trained on. Models ship their
// template as Jinja source (GGUF `tokenizer.chat_template`, tokenizer_config.json `chat_template`). Cairn
// does not interpret Jinja; it recognises the family from the template text and renders it natively, and
// refuses, with the override to use, a template it does not recognise. Recognised:
//   ChatML     <|im_start|>{role}\n{content}<|im_end|>\n ... ; generation prompt <|im_start|>assistant\n.
//              When the template injects a default system message if the first message is not a system
//              message (SmolLM2, Qwen2.5), that default is taken from the template text.
//   Llama 3    <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content, trimmed}<|eot_id|>
//   Mistral    <s>[INST] {user} [/INST]{assistant}</s>... (user/assistant alternating; no system role)

/// One message of a conversation.
public struct ChatMessage: Sendable, Equatable, Codable {
    /// `system`, `user` or `assistant`.
    public var role: String
    /// The text.
    public var content: String

    /// A message.
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A chat template Cairn can render.
public struct ChatTemplate: Sendable, Equatable {
    /// The template families.
    public enum Family: String, Sendable, CaseIterable {
        case chatml, llama3, mistral
    }

    /// The family.
    public var family: Family
    /// A system message inserted when the conversation does not start with one (ChatML variants).
    public var defaultSystemPrompt: String?

    /// A template of a family, optionally with a default system prompt.
    public init(family: Family, defaultSystemPrompt: String? = nil) {
        self.family = family
        self.defaultSystemPrompt = defaultSystemPrompt
    }

    /// Recognises the family of a Jinja chat template.
    ///
    /// - Throws: `ChatTemplateError.unrecognised` with the names `--chat-template` accepts.
    public init(jinja source: String) throws(ChatTemplateError) {
        if source.contains("<|im_start|>") {
            self.init(family: .chatml, defaultSystemPrompt: Self.injectedSystemPrompt(in: source))
        } else if source.contains("<|start_header_id|>") && source.contains("<|eot_id|>") {
            guard !source.contains("Cutting Knowledge Date") else {
                throw .unrecognised("a Llama 3.1+ template (with a knowledge-date system header)")
            }
            self.init(family: .llama3)
        } else if source.contains("[INST]") && source.contains("[/INST]") {
            guard !source.contains("[SYSTEM_PROMPT]"), !source.contains("[AVAILABLE_TOOLS]") else {
                throw .unrecognised("a Mistral template with system or tool blocks")
            }
            self.init(family: .mistral)
        } else {
            throw .unrecognised("a template of an unknown family")
        }
    }

    /// A template by the name given to `--chat-template`: `chatml`, `llama3`, `mistral`, or `smollm2`
    /// (ChatML with SmolLM2's default system prompt).
    public init?(name: String) {
        switch name.lowercased() {
        case "chatml": self.init(family: .chatml)
        case "llama3", "llama-3": self.init(family: .llama3)
        case "mistral": self.init(family: .mistral)
        case "smollm2", "smollm":
            self.init(
                family: .chatml,
                defaultSystemPrompt: "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        default: return nil
        }
    }

    /// Names accepted by `init(name:)`.
    public static let names = ["chatml", "smollm2", "llama3", "mistral"]

    /// The system text a ChatML template writes when the first message is not a system message: the string
    /// literal `<|im_start|>system\n…<|im_end|>` inside an `!= 'system'` or `else` branch.
    static func injectedSystemPrompt(in source: String) -> String? {
        guard source.contains("!= 'system'") || source.contains("!= \"system\"") || source.contains("== 'system'")
        else {
            return nil
        }
        for opener in ["<|im_start|>system\n", "<|im_start|>system\\n"] {
            var searchStart = source.startIndex
            while let r = source.range(of: opener, range: searchStart..<source.endIndex) {
                searchStart = r.upperBound
                guard let end = source.range(of: "<|im_end|>", range: r.upperBound..<source.endIndex) else { break }
                let text = String(source[r.upperBound..<end.lowerBound])
                // A literal, not an expression like `' + message['content'] + '`.
                if !text.isEmpty, !text.contains("'"), !text.contains("\""), !text.contains("{") {
                    return text.replacingEscapes()
                }
            }
        }
        return nil
    }

    /// Renders a conversation.
    ///
    /// - Parameters:
    ///   - messages: The conversation so far.
    ///   - addGenerationPrompt: End with the header of an assistant turn, for generation.
    ///   - bosText: The BOS token's text (Llama 3, Mistral templates start with it).
    ///   - eosText: The EOS token's text (Mistral closes assistant turns with it).
    /// - Throws: `ChatTemplateError.invalidConversation` for roles the family cannot express.
    public func render(
        _ messages: [ChatMessage], addGenerationPrompt: Bool, bosText: String = "", eosText: String = ""
    ) throws(ChatTemplateError) -> String {
        try segments(messages, addGenerationPrompt: addGenerationPrompt, bosText: bosText, eosText: eosText)
            .map(\.text).joined()
    }

    /// The rendered conversation as segments: template markup (which may contain special tokens) and message
    /// content (plain text, where `<|im_end|>` typed by a user is not a token), each marked as trained or not.
    /// An assistant turn trains on its content and the markup that ends it (the end-of-turn token), so the
    /// model learns to stop. Concatenated, the segments are `render`'s text.
    public func segments(
        _ messages: [ChatMessage], addGenerationPrompt: Bool, bosText: String = "", eosText: String = ""
    ) throws(ChatTemplateError) -> [ChatSegment] {
        var out: [ChatSegment] = []
        func markup(_ text: String, trained: Bool = false) {
            out.append(ChatSegment(text: text, isContent: false, isTrained: trained))
        }
        func content(_ text: String, trained: Bool) {
            out.append(ChatSegment(text: text, isContent: true, isTrained: trained))
        }
        switch family {
        case .chatml:
            if let system = defaultSystemPrompt, messages.first?.role != "system" {
                markup("<|im_start|>system\n\(system)<|im_end|>\n")
            }
            for m in messages {
                let assistant = m.role == "assistant"
                markup("<|im_start|>\(m.role)\n")
                content(m.content, trained: assistant)
                markup("<|im_end|>", trained: assistant)
                markup("\n")
            }
            if addGenerationPrompt { markup("<|im_start|>assistant\n") }
        case .llama3:
            markup(bosText)
            for m in messages {
                let assistant = m.role == "assistant"
                markup("<|start_header_id|>\(m.role)<|end_header_id|>\n\n")
                content(m.content.jinjaTrimmed, trained: assistant)
                markup("<|eot_id|>", trained: assistant)
            }
            if addGenerationPrompt { markup("<|start_header_id|>assistant<|end_header_id|>\n\n") }
        case .mistral:
            markup(bosText)
            for (i, m) in messages.enumerated() {
                guard (m.role == "user") == (i % 2 == 0) else {
                    throw .invalidConversation(
                        "Mistral's template needs user and assistant turns alternating, starting with user")
                }
                switch m.role {
                case "user":
                    markup("[INST] ")
                    content(m.content, trained: false)
                    markup(" [/INST]")
                case "assistant":
                    content(m.content, trained: true)
                    markup(eosText, trained: true)
                default:
                    throw .invalidConversation("Mistral's template has no \"\(m.role)\" role (only user and assistant)")
                }
            }
        }
        return out.filter { !$0.text.isEmpty }
    }
}

/// A piece of a rendered conversation.
public struct ChatSegment: Sendable, Equatable {
    /// The text.
    public var text: String
    /// Message content (tokenized as plain text) rather than template markup (special tokens parsed).
    public var isContent: Bool
    /// Whether training takes its loss on these tokens (assistant content and end of turn).
    public var isTrained: Bool
}

/// Why a chat template could not be used.
public enum ChatTemplateError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The model's template is not one Cairn recognises.
    case unrecognised(String)
    /// The conversation cannot be expressed in the template.
    case invalidConversation(String)

    public var description: String {
        switch self {
        case .unrecognised(let what):
            "the model's chat template is \(what), which Cairn does not recognise; pass --chat-template with one of "
                + "\(ChatTemplate.names.joined(separator: ", ")), or --raw to send the prompt as is"
        case .invalidConversation(let why): why
        }
    }
}

extension String {
    /// Jinja's `trim`: strips leading and trailing whitespace.
    var jinjaTrimmed: String {
        var scalars = Substring(self).unicodeScalars
        while let f = scalars.first, f.properties.isWhitespace { scalars.removeFirst() }
        while let l = scalars.last, l.properties.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }

    /// Turns `\n` and `\t` escapes of a Jinja string literal into characters.
    func replacingEscapes() -> String {
        var out = ""
        var escape = false
        for c in self {
            if escape {
                switch c {
                case "n": out.append("\n")
                case "t": out.append("\t")
                default: out.append(c)
                }
                escape = false
            } else if c == "\\" {
                escape = true
            } else {
                out.append(c)
            }
        }
        return out
    }
}
