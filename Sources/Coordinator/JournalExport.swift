// A job's adapter written from the state directory alone: the adapter of its last journaled step, whether the job
// finished or not and whether the coordinator runs or not. `cairn coordinator export` uses it, and the Slurm batch
// script keeps a stopped job's adapter with it when an allocation ends.

import Foundation
import Llama
import ModelFormats

/// The forms an exported adapter takes.
public enum AdapterFileFormat: String, Sendable, CaseIterable {
    /// A PEFT directory: adapter_config.json + adapter_model.safetensors.
    case peft
    /// One GGUF LoRA file (llama.cpp --lora).
    case gguf
}

/// What `Coordinator.exportJournaledAdapter` wrote.
public struct JournaledAdapter: Sendable, Equatable {
    public var job: String
    /// The job's state in the journal (done, running, cancelled, …).
    public var state: String
    /// "step" (sync jobs) or "round" (diloco and federated jobs).
    public var unit: String
    /// The step (or round) whose adapter was written, and how many the job has in all.
    public var step: Int
    public var totalSteps: Int
}

extension Coordinator {
    /// Writes the adapter of `job`'s last journaled step to `path` (a directory for PEFT, a file for GGUF),
    /// replacing what is there only once the new adapter is complete. The job's model, data and checkpoint come from
    /// the blobs in `stateDirectory`; the lineage records the steps done.
    public static func exportJournaledAdapter(
        stateDirectory dir: String, job id: String, format: AdapterFileFormat, to path: String
    ) throws(CoordinatorError) -> JournaledAdapter {
        let database = (dir as NSString).appendingPathComponent("cairn.sqlite")
        guard FileManager.default.fileExists(atPath: database) else {
            throw CoordinatorError(
                "\(dir) is not a coordinator's state directory (it has no cairn.sqlite); pass --state")
        }
        let record: JobRecord
        let blobs: BlobStore
        do {
            guard let r = try Store(directory: dir).job(id) else {
                throw CoordinatorError("no job \(id) in \(dir); `cairn status --state \(dir)` lists the jobs")
            }
            record = r
            blobs = try BlobStore(root: StateFiles.blobs(dir))
        } catch let error as CoordinatorError { throw error } catch { throw CoordinatorError("\(error)") }
        guard record.checkpointBlob != nil else {
            throw CoordinatorError(
                "\(id) has no journaled step yet (it is \(record.state.rawValue)); nothing to export")
        }
        let job: any RunningJob
        do { job = try loadJob(record: record, blobs: blobs) } catch {
            throw CoordinatorError("cannot load \(id) from \(dir): \(error)")
        }

        let fm = FileManager.default
        let folder = (path as NSString).deletingLastPathComponent
        let parent = folder.isEmpty ? "." : folder
        let staging = (parent as NSString).appendingPathComponent(
            ".\((path as NSString).lastPathComponent).partial-\(getpid())")
        do {
            try? fm.removeItem(atPath: staging)
            try fm.createDirectory(atPath: parent, withIntermediateDirectories: true)
            let provenance = job.provenance()
            switch format {
            case .peft:
                try fm.createDirectory(atPath: staging, withIntermediateDirectories: false)
                try job.adapter.savePEFT(directory: staging, provenance: provenance, recipe: job.prepared.config.lora)
            case .gguf:
                try job.adapter.saveGGUF(path: staging, provenance: provenance, name: id)
            }
            // A directory cannot be renamed over a non-empty one: the old adapter goes only once the new is whole.
            if fm.fileExists(atPath: path) { try fm.removeItem(atPath: path) }
            try fm.moveItem(atPath: staging, toPath: path)
        } catch {
            try? fm.removeItem(atPath: staging)
            throw CoordinatorError("cannot write the adapter to \(path): \(error)")
        }
        return JournaledAdapter(
            job: id, state: record.state.rawValue, unit: job.unitName, step: job.step,
            totalSteps: job.units)
    }
}
