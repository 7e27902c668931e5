// The coordinator's schedule, one event at a time: the cases the simulator found or that once went wrong, spelled
// out so that a reader sees the rule each one keeps.

import Coordinator
import Testing

@Suite struct JobScheduleTests {
    let deadlines = Deadlines(floor: 1, first: 10)

    func assignments(_ actions: [JobSchedule.Action]) -> [Assignment] {
        actions.compactMap { if case .assign(let a, _, _) = $0 { a } else { nil } }
    }

    func ready(_ id: String, examples: Int? = nil) -> JobSchedule.Event {
        .ready(worker: id, gflops: 1, rowsPerSecond: nil, localExamples: examples)
    }

    /// Found by the simulator (seed 13): a lone diloco worker lost mid-round and back again was kept out of the
    /// round it had taken part in, and the round waited on nobody for ever.
    @Test func aLoneWorkerLostMidRoundTakesTheRoundAgain() {
        var s = JobSchedule(
            plan: JobPlan(mode: .diloco, totalSteps: 4, rowsPerStep: 2, innerSteps: 2), firstAssignment: 100,
            deadlines: deadlines)
        let first = assignments(s.handle(ready("w0"), now: 0))
        #expect(first.count == 1 && first[0].rows.count == 4)
        #expect(s.handle(.gone(worker: "w0"), now: 1) == [.released(first[0], .round)])
        let again = assignments(s.handle(ready("w0"), now: 2))
        #expect(again.count == 1 && again[0].id != first[0].id, "the round is handed out again")
        let done = s.handle(.result(worker: "w0", assignment: again[0].id, kind: .round, unit: 1, seconds: 1), now: 3)
        #expect(done.contains(.finish(.round, unit: 1, rows: [:])))
        #expect(s.unit == 1)
    }

    /// A worker whose round result is in stays a participant when it reconnects: one result per worker a round.
    @Test func aWorkerAddsAtMostOneResultToARound() {
        var s = JobSchedule(
            plan: JobPlan(mode: .diloco, totalSteps: 2, rowsPerStep: 1, innerSteps: 2), firstAssignment: 1,
            deadlines: deadlines)
        let a = assignments(s.handle(ready("w0"), now: 0)) + assignments(s.handle(ready("w1"), now: 0))
        #expect(a.map(\.worker) == ["w0", "w1"])
        _ = s.handle(.result(worker: "w0", assignment: a[0].id, kind: .round, unit: 1, seconds: 1), now: 1)
        #expect(s.handle(.gone(worker: "w0"), now: 2).isEmpty)
        #expect(assignments(s.handle(ready("w0"), now: 3)).isEmpty, "w0's result is in: no second assignment")
        #expect(s.unit == 0, "the round waits for w1")
    }

    /// A round assignment past its deadline is revoked; the worker may take the round again, with twice the time.
    @Test func aMissedRoundDeadlineHandsTheRoundOutAgainWithMoreTime() {
        var s = JobSchedule(
            plan: JobPlan(mode: .federated, totalSteps: 2, rowsPerStep: 1, innerSteps: 2), firstAssignment: 1,
            deadlines: deadlines)
        #expect(assignments(s.handle(ready("w0", examples: 0), now: 0)).isEmpty, "no data of its own: no round")
        let a = assignments(s.handle(ready("w1", examples: 5), now: 0))
        #expect(a.count == 1 && a[0].worker == "w1" && a[0].deadline == 30)
        let late = s.handle(.tick, now: 30)
        #expect(late.first == .revoke(a[0], .round))
        let b = assignments(late)
        #expect(b.count == 1 && b[0].deadline == 30 + 60, "the next deadline is doubled")
        let stale = s.handle(.result(worker: "w1", assignment: a[0].id, kind: .round, unit: 1, seconds: 40), now: 31)
        #expect(stale == [.ignore(worker: "w1", assignment: a[0].id, .round)], "the revoked assignment's result")
    }

    /// A malformed gradient gives its rows back (they were once counted done and skipped).
    @Test func aMalformedResultGivesItsRowsBack() {
        var s = JobSchedule(
            plan: JobPlan(mode: .sync, totalSteps: 1, rowsPerStep: 4), firstAssignment: 1, deadlines: deadlines)
        let a = assignments(s.handle(ready("w0"), now: 0))
        #expect(
            a.count == 1 && a[0].worker == "w0" && a[0].rows == [0, 1, 2, 3], "the step, to the first ready worker")
        #expect(assignments(s.handle(ready("w1"), now: 0)).isEmpty, "nothing left to hand out")
        let back = s.handle(.malformed(worker: "w0", assignment: a[0].id), now: 1)
        #expect(back.first == .released(a[0], .step))
        let again = assignments(back)
        #expect(again.map(\.rows).flatMap { $0 }.sorted() == [0, 1, 2, 3], "every row handed out again")
        var finished: [JobSchedule.Action] = []
        for b in again {
            finished += s.handle(.result(worker: b.worker, assignment: b.id, kind: .step, unit: 1, seconds: 1), now: 2)
        }
        #expect(
            finished.contains {
                if case .finish(.step, 1, let rows) = $0 { rows.values.reduce(0, +) == 4 } else { false }
            })
        #expect(finished.last == .complete)
    }

    /// Results are accepted once, from the worker holding the assignment, for the unit in progress.
    @Test func onlyTheHolderOfAnAssignmentCompletesIt() {
        var s = JobSchedule(
            plan: JobPlan(mode: .sync, totalSteps: 2, rowsPerStep: 2), firstAssignment: 7, deadlines: deadlines)
        let a = assignments(s.handle(ready("w0"), now: 0))[0]
        _ = s.handle(ready("w1"), now: 0)
        let forged = JobSchedule.Event.result(worker: "w1", assignment: a.id, kind: .step, unit: 1, seconds: 1)
        #expect(s.handle(forged, now: 1).first == .ignore(worker: "w1", assignment: a.id, .step))
        let unknown = JobSchedule.Event.result(worker: "intruder", assignment: a.id, kind: .step, unit: 1, seconds: 1)
        #expect(s.handle(unknown, now: 1).first == .ignore(worker: "intruder", assignment: a.id, .step))
        let wrongUnit = JobSchedule.Event.result(worker: "w0", assignment: a.id, kind: .step, unit: 2, seconds: 1)
        #expect(s.handle(wrongUnit, now: 1).first == .ignore(worker: "w0", assignment: a.id, .step))
        let real = JobSchedule.Event.result(worker: "w0", assignment: a.id, kind: .step, unit: 1, seconds: 1)
        #expect(s.handle(real, now: 1).first == .accept(a, .step))
        #expect(s.handle(real, now: 1).first == .ignore(worker: "w0", assignment: a.id, .step), "a repeat")
        #expect(s.unit == 1)
    }

    /// A coordinator restarted between a step and its evaluation runs the evaluation before the next step.
    @Test func anOwedEvaluationRunsFirst() {
        let plan = JobPlan(mode: .sync, totalSteps: 4, rowsPerStep: 2, evaluationRows: 3, evalEvery: 2)
        #expect(plan.evaluationDue(after: 2) && !plan.evaluationDue(after: 3) && plan.evaluationDue(after: 4))
        var s = JobSchedule(plan: plan, unit: 2, evaluationPending: true, firstAssignment: 1, deadlines: deadlines)
        let actions = s.handle(ready("w0"), now: 0)
        #expect(actions.first == .begin(.evaluation, unit: 2))
        let a = assignments(actions)
        #expect(a.count == 1 && a[0].rows == [0, 1, 2])
        let next = s.handle(.result(worker: "w0", assignment: a[0].id, kind: .evaluation, unit: 2, seconds: 1), now: 1)
        #expect(next.contains(.finish(.evaluation, unit: 2, rows: ["w0": 3])))
        #expect(next.contains(.begin(.step, unit: 3)))
    }
}
