// TrainingData: a job's data files → tokenized examples (training and held out), the way `cairn train` and the
// cluster coordinator both read them.

import Foundation
import Llama
import TensorKernels
import Tokenizer

/// Tokenized examples of a job.
public struct TrainingData: Sendable {
    public var train: [Example]
    public var validation: [Example]
    /// Malformed records skipped (with `skip_bad_records`).
    public var skipped: Int
    /// SHA-256 of the tokenized training examples (`Trainer.hash`).
    public var hash: String

    /// Reads `config.data` (and `validation_data`, or holds out `validation_split` of the examples).
    ///
    /// - Parameter template: the chat template, or why there is none (reported only if a record needs one).
    /// - Throws: `TrainingError.data` naming the file and line of a bad record.
    public static func load(
        config: TrainingConfig, tokenizer: BPETokenizer, template: Result<ChatTemplate, ChatTemplateError>
    ) throws(TrainingError) -> TrainingData {
        let builder = ExampleBuilder(tokenizer: tokenizer, template: try? template.get(), lossOn: config.lossOn)
        func examples(_ path: String) throws(TrainingError) -> ([Example], Int) {
            let dataset: Dataset
            do { dataset = try Dataset(path: path, skipBadRecords: config.skipBadRecords) } catch { throw .data(error) }
            var out: [Example] = []
            for (line, record) in dataset.records {
                do {
                    out.append(try builder.example(record))
                } catch {
                    if case .chat = record, case .failure(let why) = template { throw .template(why) }
                    throw .data(InputError(path: path, line: line, error.description))
                }
            }
            return (out, dataset.skipped.count)
        }
        var (train, skipped) = try examples(config.data)
        var validation: [Example] = []
        if let v = config.validationData {
            let (examples, s) = try examples(v)
            validation = examples
            skipped += s
        } else if config.validationSplit > 0 {
            // A seeded choice of examples, the same on every run with the same seed and data.
            var order = Array(train.indices)
            var rng = SeededGenerator(seed: config.seed ^ 0x5EED_0F_DA7A)
            for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
            let count = max(1, Int(Double(train.count) * config.validationSplit))
            guard count < train.count else {
                throw .run("validation_split \(config.validationSplit) leaves no training examples")
            }
            let held = Set(order.prefix(count))
            validation = order.prefix(count).sorted().map { train[$0] }
            train = train.indices.filter { !held.contains($0) }.map { train[$0] }
        }
        return TrainingData(train: train, validation: validation, skipped: skipped, hash: Trainer.hash(train))
    }
}
