import Foundation
import TestSupport
import Testing

/// Services are stopped with SIGTERM at any moment, also right after they start (a batch script that gives up,
/// systemd stopping a unit that just started). The first signal must always be seen.
@Suite struct SignalTests {
    /// The coordinator, sent SIGTERM at delays from 0 to 60 ms after its start, ends every time: stopped cleanly
    /// (status 0) or, before its handler exists, by the signal's default action. Never does it run on.
    @Test func sigtermRightAfterStartAlwaysEndsTheCoordinator() throws {
        for delay in stride(from: 0, through: 60, by: 4) {
            let dir = Fixtures.temporaryDirectory("cairn-sigterm")
            defer { try? FileManager.default.removeItem(at: dir) }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: cairnExecutable)
            process.arguments = [
                "coordinator", "serve", "--state", dir.path, "--listen", "tcp://127.0.0.1:*", "--http", "off",
            ]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            let ended = DispatchSemaphore(value: 0)
            process.terminationHandler = { _ in ended.signal() }
            try process.run()
            usleep(useconds_t(delay * 1000))
            kill(process.processIdentifier, SIGTERM)
            let inTime = ended.wait(timeout: .now() + 20) == .success
            if !inTime { kill(process.processIdentifier, SIGKILL) }
            #expect(inTime, "SIGTERM \(delay) ms after the start was lost: the coordinator ran on")
            if inTime {
                let clean = process.terminationReason == .exit && process.terminationStatus == 0
                let byDefault = process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGTERM
                #expect(clean || byDefault, "delay \(delay) ms: status \(process.terminationStatus)")
            }
        }
    }
}
