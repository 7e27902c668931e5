// Command: runs a program and captures its output, for tests that drive the `cairn` binary.

import Foundation

/// The result of running a program.
public struct CommandResult: Sendable {
    /// Exit status.
    public var status: Int32
    /// Standard output.
    public var stdout: String
    /// Standard error.
    public var stderr: String
}

/// Runs `executable` with `arguments`, optional standard input and extra environment; waits for it, or with a
/// `timeout` kills it (SIGKILL) after that many seconds (its status is then 9, from the signal).
public func runCommand(
    _ executable: String, _ arguments: [String], input: String? = nil, environment: [String: String] = [:],
    timeout: Double? = nil
) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let out = Pipe()
    let err = Pipe()
    let inPipe = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = inPipe
    try process.run()
    var watchdog: DispatchWorkItem?
    if let timeout {
        let pid = process.processIdentifier
        let item = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: item)
        watchdog = item
    }
    defer { watchdog?.cancel() }
    if let input { inPipe.fileHandleForWriting.write(Data(input.utf8)) }
    try inPipe.fileHandleForWriting.close()
    // Read both pipes to the end before waiting, so a chatty child cannot block on a full pipe.
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return CommandResult(
        status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
        stderr: String(decoding: errData, as: UTF8.self))
}

/// The `cairn` binary of this build configuration (.build/debug or .build/release).
public var cairnExecutable: String {
    #if DEBUG
        let configuration = "debug"
    #else
        let configuration = "release"
    #endif
    return Fixtures.directory.deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent(".build/\(configuration)/cairn").path
}
