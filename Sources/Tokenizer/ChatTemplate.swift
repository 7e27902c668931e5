// ChatTemplate: renders a conversation as the prompt text a chat model was trained on. Models ship their
// template as Jinja source (GGUF `tokenizer.chat_template`, tokenizer_config.json `chat_template`); Cairn renders
// that source with its own Jinja interpreter (Jinja/), as Hugging Face's transformers does: messages, tools and
// documents (none), add_generation_prompt, and the tokenizer's special tokens. A construct outside the subset is
// an error naming it and its line; `--chat-template NAME` picks a built-in template instead.
//
// For training, the rendered text is split into segments: a message's own content (tokenized as plain text, so
// a user typing "<|im_end|>" does not end the turn) and template markup (special tokens parsed). Assistant
// content is trained on, and so is the markup after it up to and including the first end-of-turn token, so the
// model learns to stop.

import Foundation

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

/// A chat template: Jinja source, parsed.
public struct ChatTemplate: @unchecked Sendable {
    /// The Jinja source.
    public let source: String
    /// The built-in template's name, when it is one.
    public let name: String?
    let template: JinjaTemplate

    /// Parses a model's Jinja template.
    ///
    /// - Throws: `ChatTemplateError.template` naming the construct Cairn does not support, or the syntax error,
    ///   with its line.
    public init(jinja source: String) throws(ChatTemplateError) {
        try self.init(source: source, name: nil)
    }

    /// The longest template accepted (real ones are a few KiB; Qwen3's is about 4).
    public static let maxSourceBytes = 1 << 20

    init(source: String, name: String?) throws(ChatTemplateError) {
        guard source.utf8.count <= Self.maxSourceBytes else {
            throw .template(JinjaError(.unsupported, "the template is longer than \(Self.maxSourceBytes) bytes"))
        }
        self.source = source
        self.name = name
        do throws(JinjaError) {
            template = try JinjaTemplate(source)
        } catch {
            throw .template(error)
        }
    }

    /// A built-in template by the name given to `--chat-template`.
    public init?(name: String) {
        guard let source = Self.builtIn[name.lowercased()] else { return nil }
        try? self.init(source: source, name: name.lowercased())
    }

    /// Names accepted by `init(name:)`.
    public static let names = ["chatml", "smollm2", "llama3", "mistral", "gemma", "phi3"]

    /// The built-in templates, for models that ship none or one that needs overriding.
    static let builtIn: [String: String] = [
        "chatml":
            "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
            + "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
            + "{% endif %}",
        "smollm2":
            "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
            + "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
            + "<|im_end|>\\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
            + "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
            + "{% endif %}",
        "llama3":
            "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
            + "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
        "mistral":
            "{{ bos_token }}{% for message in messages %}"
            + "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
            + "{{ raise_exception('Mistral\\'s template needs user and assistant turns alternating, starting with "
            + "user') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
            + "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
            + "{% else %}{{ raise_exception('Mistral\\'s template has only user and assistant roles') }}{% endif %}"
            + "{% endfor %}",
        "gemma":
            "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
            + "else message['role'] %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + "
            + "'<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}"
            + "{% endif %}",
        "phi3":
            "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
            + "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    ]

    /// Renders a conversation.
    ///
    /// - Parameters:
    ///   - messages: The conversation so far.
    ///   - addGenerationPrompt: End with the header of an assistant turn, for generation.
    ///   - bosText: The BOS token's text (`bos_token`), empty when the tokenizer has none.
    ///   - eosText: The EOS token's text (`eos_token`).
    /// - Throws: `ChatTemplateError.invalidConversation` when the template refuses the conversation
    ///   (`raise_exception`), `.template` for an error while rendering.
    ///   - date: What `strftime_now` sees (templates that print today's date).
    public func render(
        _ messages: [ChatMessage], addGenerationPrompt: Bool, bosText: String = "", eosText: String = "",
        date: Date = Date()
    ) throws(ChatTemplateError) -> String {
        try renderTagged(
            messages, addGenerationPrompt: addGenerationPrompt, bosText: bosText, eosText: eosText, date: date
        ).string
    }

    func renderTagged(
        _ messages: [ChatMessage], addGenerationPrompt: Bool, bosText: String, eosText: String, date: Date = Date()
    ) throws(ChatTemplateError) -> JinjaText {
        var globals: [String: JinjaValue] = [
            "messages": .list(
                messages.enumerated().map { i, m in
                    .dict(
                        JinjaDict([("role", .text(m.role)), ("content", .string(JinjaText(m.content, tag: Int32(i))))]))
                }),
            "add_generation_prompt": .bool(addGenerationPrompt), "tools": .none, "documents": .none,
        ]
        if !bosText.isEmpty { globals["bos_token"] = .text(bosText) }
        if !eosText.isEmpty { globals["eos_token"] = .text(eosText) }
        var interpreter = JinjaInterpreter(globals: globals, date: date)
        defer { interpreter.limits.releaseNamespaces() }
        do throws(JinjaError) {
            _ = try interpreter.render(template.body)
        } catch {
            if error.kind == .raised { throw .invalidConversation(error.message) }
            throw .template(error)
        }
        return interpreter.output
    }

    /// The rendered conversation as segments: template markup (which may contain special tokens) and message
    /// content (plain text), each marked as trained or not. An assistant turn trains on its content and on the
    /// markup after it through the first of `endOfTurn` (the tokenizer's end-of-generation texts), so the model
    /// learns to stop. Concatenated, the segments are `render`'s text.
    public func segments(
        _ messages: [ChatMessage], addGenerationPrompt: Bool, bosText: String = "", eosText: String = "",
        endOfTurn: [String] = []
    ) throws(ChatTemplateError) -> [ChatSegment] {
        let text = try renderTagged(
            messages, addGenerationPrompt: addGenerationPrompt, bosText: bosText, eosText: eosText)
        var runs: [(text: String, tag: Int32)] = []
        var start = 0
        for i in 1...text.count where i == text.count || text.tags[i] != text.tags[start] {
            runs.append((text[start..<i].string, text.tags[start]))
            start = i
        }
        let ends = (endOfTurn + (eosText.isEmpty ? [] : [eosText])).filter { !$0.isEmpty }
        var out: [ChatSegment] = []
        var afterAssistant = false
        for run in runs {
            if run.tag >= 0 {
                let assistant = Int(run.tag) < messages.count && messages[Int(run.tag)].role == "assistant"
                out.append(ChatSegment(text: run.text, isContent: true, isTrained: assistant))
                afterAssistant = assistant
                continue
            }
            if afterAssistant,
                let end = ends.compactMap({ run.text.range(of: $0) }).min(by: { $0.upperBound < $1.upperBound })
            {
                let head = String(run.text[..<end.upperBound])
                let tail = String(run.text[end.upperBound...])
                out.append(ChatSegment(text: head, isContent: false, isTrained: true))
                if !tail.isEmpty { out.append(ChatSegment(text: tail, isContent: false, isTrained: false)) }
            } else {
                out.append(ChatSegment(text: run.text, isContent: false, isTrained: false))
            }
            afterAssistant = false
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

    /// A segment.
    public init(text: String, isContent: Bool, isTrained: Bool) {
        self.text = text
        self.isContent = isContent
        self.isTrained = isTrained
    }
}

/// Why a chat template could not be used.
public enum ChatTemplateError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The model ships no template, or `--chat-template` named none Cairn has.
    case unrecognised(String)
    /// The template uses a construct Cairn's Jinja does not support, or is not valid Jinja.
    case template(JinjaError)
    /// The template refused the conversation (its own `raise_exception`).
    case invalidConversation(String)

    public var description: String {
        switch self {
        case .unrecognised(let what):
            "the chat template is \(what); pass --chat-template with one of "
                + "\(ChatTemplate.names.joined(separator: ", ")), or --raw to send the prompt as is"
        case .template(let error):
            "the model's chat template cannot be rendered: \(error); pass --chat-template with one of "
                + "\(ChatTemplate.names.joined(separator: ", ")), or --raw to send the prompt as is"
        case .invalidConversation(let why): "the chat template refuses this conversation: \(why)"
        }
    }
}
